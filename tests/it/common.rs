use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this is a CI run: `CI=true`, the one rule the suite and the tool share.
pub fn ci() -> bool {
    model_export::config::env::ci()
}

/// The lowered bars of 4-bit exports of the random-weight fixtures, as export options. On random
/// weights every 4-bit method is poor (cosine 0.95-0.99 to the reference, whatever the scheme:
/// docs/quantization.md); the dtype defaults come from trained weights (docs/validation.md), so
/// the tests that quantize a random-weight model to 4 bits state these instead, for this reason.
pub const RANDOM_WEIGHTS_4BIT: &str = "min-cosine = 0.95, min-top1 = 0.6";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// A temporary cargo project whose manifest carries the given metadata tables.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// `tables` is appended to a minimal manifest; `{fixtures}` expands to the fixtures folder.
    pub fn new(tables: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!(
            "[package]\nname = \"proj\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n{}",
            tables.replace("{fixtures}", &fixtures().display().to_string())
        );
        std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "").unwrap();
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_in(self.path(), args, env)
    }

    /// Replaces machine-specific paths so messages can be snapshot.
    pub fn redact(&self, text: &str) -> String {
        let project = self.path().canonicalize().unwrap();
        text.replace(&project.display().to_string(), "[PROJECT]")
            .replace(&self.path().display().to_string(), "[PROJECT]")
            .replace(&fixtures().display().to_string(), "[FIXTURES]")
    }
}

/// Runs `cargo-model-export` in `dir` with a clean `MODEL_EXPORT_*` environment.
pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-model-export"));
    cmd.current_dir(dir).args(args).env("NO_COLOR", "1");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MODEL_EXPORT_")) {
        cmd.env_remove(key);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().expect("the binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Copies a folder tree (a fixture a test changes).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
