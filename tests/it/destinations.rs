//! The tool replaces only folders it wrote: a user's folder given as `--out` or sitting where an
//! export goes is refused (exit 2) unless `--force`; the base and the adapter, and folders that
//! hold them, are never replaced. Every test works on copies and checks the bytes stayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{Project, copy_dir, fixture, run_in};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A workspace with copies of the base and the training run.
fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("models/qwen3-tiny");
    let run = dir.path().join("runs/sft");
    copy_dir(&fixture("qwen3-tiny"), &base);
    copy_dir(&fixture("qwen3-tiny-run"), &run);
    (dir, base, run)
}

fn merge(dir: &Path, base: &Path, run: &Path, out: &Path, extra: &[&str]) -> crate::common::Output {
    let mut args = vec![
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_in(dir, &args, &[])
}

#[test]
fn merge_refuses_a_users_folder_unless_forced() {
    let (dir, base, run) = workspace();
    let out = dir.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "my notes").unwrap();
    let refused = merge(dir.path(), &base, &run, &out, &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("refusing to replace {}", out.display())), "{}", refused.stderr);
    assert!(refused.stderr.contains("it holds notes.txt"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"my notes");
    assert_eq!(snapshot(&out).len(), 1);
    // A folder the tool wrote is replaced without a word; --force takes a user's folder.
    let forced = merge(dir.path(), &base, &run, &out, &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(!out.join("notes.txt").exists() && out.join("manifest.json").is_file());
    let again = merge(dir.path(), &base, &run, &out, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
}

#[test]
fn the_base_the_run_and_their_parents_are_never_destinations_even_with_force() {
    let (dir, base, run) = workspace();
    let (base_before, run_before) = (snapshot(&base), snapshot(&run));
    let checkpoint = run.join("checkpoint-4");
    for out in [base.clone(), dir.path().join("models"), run.clone(), checkpoint, dir.path().to_path_buf()] {
        for extra in [&[][..], &["--force"][..]] {
            let refused = merge(dir.path(), &base, &run, &out, extra);
            assert_eq!(refused.code, 2, "{} {extra:?}: {}", out.display(), refused.stderr);
            assert!(refused.stderr.contains("refusing to replace"), "{}", refused.stderr);
            assert!(
                refused.stderr.contains("the base model") || refused.stderr.contains("the adapter"),
                "{}",
                refused.stderr
            );
        }
    }
    assert!(snapshot(&base) == base_before, "the base's bytes changed");
    assert!(snapshot(&run) == run_before, "the run's bytes changed");
}

#[test]
fn run_and_clean_refuse_a_users_folder_where_an_export_goes() {
    let (dir, base, run) = workspace();
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{}\"\nadapter = \"{}\"\nout-dir = \"out\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n",
        base.display(),
        run.display()
    ));
    let hf = project.path().join("out/hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("report.xlsx"), "quarterly").unwrap();
    let refused = project.run(&["run"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("it holds report.xlsx"), "{}", refused.stderr);
    assert_eq!(std::fs::read(hf.join("report.xlsx")).unwrap(), b"quarterly");
    let clean = project.run(&["clean", "--exports"]);
    assert_eq!(clean.code, 2, "{}", clean.stderr);
    assert_eq!(std::fs::read(hf.join("report.xlsx")).unwrap(), b"quarterly");
    // Once the folder is the tool's own, both go through.
    std::fs::remove_file(hf.join("report.xlsx")).unwrap();
    assert_eq!(project.run(&["run", "-q"]).code, 0);
    assert_eq!(project.run(&["clean", "--exports"]).code, 0);
    assert!(!hf.exists());
    drop(dir);
}
