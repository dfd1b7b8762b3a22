//! `run` as a pipeline: skipping unchanged stages, redoing exactly what changed, resuming after
//! SIGKILL at named moments with byte-identical results, the lock, preflight and --dry-run.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::common::Project;

const TABLES: &str = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "onnx-f32"
format = "onnx"
options = { external-data = true }

[[package.metadata.model-export.export]]
name = "st-f16"
format = "safetensors"
dtype = "f16"

[[package.metadata.model-export.export]]
name = "onnx-int8"
format = "onnx"
dtype = "int8"
"#;

/// SHA-256 of every file under `exports/` by relative path, except the per-run measurements,
/// the state records, and report.json/validation.json, whose unrounded f64 metrics can differ in the last digit
/// between runs (ONNX Runtime's threaded reductions); report.md rounds them and is compared.
fn artifacts(project: &Project) -> BTreeMap<String, String> {
    let root = project.path().join("exports");
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            if rel.starts_with(".state")
                || rel == "run.json"
                || rel.ends_with(".json") && (rel == "report.json" || rel.ends_with("validation.json"))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let text = project.redact(&String::from_utf8_lossy(&bytes));
                let hashed = if std::str::from_utf8(&bytes).is_ok() { text.into_bytes() } else { bytes };
                files.insert(rel, format!("{:x}", Sha256::digest(&hashed)));
            }
        }
    }
    files
}

fn stage_outcomes(out: &crate::common::Output) -> BTreeMap<String, String> {
    out.json()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().to_string(), s["outcome"].as_str().unwrap().to_string()))
        .collect()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join(".state")] {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".partial-") || name.starts_with(".old-") || name == "lock" {
                found.push(name);
            }
        }
    }
    if dir.join(".state/tmp").exists() {
        found.push(".state/tmp".into());
    }
    found
}

#[test]
fn unchanged_rerun_skips_every_stage_and_a_dtype_change_redoes_only_that_export() {
    let project = Project::new(TABLES);
    let first = project.run(&["run", "--message-format", "json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(stage_outcomes(&first).values().all(|o| o == "ran"), "{}", first.stdout);
    let before = artifacts(&project);

    let again = project.run(&["run", "--message-format", "json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let outcomes = stage_outcomes(&again);
    assert_eq!(outcomes.len(), 7, "{outcomes:?}");
    assert!(outcomes.values().all(|o| o == "skipped"), "{outcomes:?}");
    assert_eq!(artifacts(&project), before);
    // The summary still describes the skipped exports and their validation.
    assert_eq!(again.json()["exports"][1]["dtype"], "f16");
    assert_eq!(again.json()["validation"]["passed"], true);

    let manifest = project.path().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "name = \"st-f16\"\nformat = \"safetensors\"\ndtype = \"f16\"",
            "name = \"st-f16\"\nformat = \"safetensors\"\ndtype = \"bf16\"",
        ),
    )
    .unwrap();
    let changed = project.run(&["run", "--message-format", "json"]);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    let outcomes = stage_outcomes(&changed);
    let ran: Vec<_> = outcomes.iter().filter(|(_, o)| *o == "ran").map(|(s, _)| s.as_str()).collect();
    assert_eq!(ran, ["export:st-f16", "report", "validate:st-f16"]);
    let after = artifacts(&project);
    for (file, hash) in &before {
        if !file.starts_with("st-f16") && !file.starts_with("report") {
            assert_eq!(after.get(file), Some(hash), "{file} changed");
        }
    }
    assert_ne!(after["st-f16/model.safetensors"], before["st-f16/model.safetensors"]);

    let forced = project.run(&["run", "--force", "--message-format", "json"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(stage_outcomes(&forced).values().all(|o| o == "ran"));
    assert_eq!(artifacts(&project), after, "a forced re-run writes the same bytes");
}

#[test]
fn a_run_killed_at_any_named_moment_resumes_to_identical_artifacts() {
    let reference = Project::new(TABLES);
    let out = reference.run(&["run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected = artifacts(&reference);
    assert!(expected.contains_key("onnx-f32/model.onnx_data"), "{expected:?}");

    // While writing ONNX external data, while the safetensors export merges and writes, between
    // exports, during validation, and between report.json and report.md.
    for fault in ["export-tensor:5", "merge-tensor:3", "between-exports:2", "validated:1", "report:1"] {
        let project = Project::new(TABLES);
        let killed = project.run_env(&["run"], &[("MODEL_EXPORT_FAULT", fault)]);
        assert_eq!(killed.code, -1, "{fault}: the run was not killed\n{}", killed.stderr);
        if fault == "export-tensor:5" {
            // The export being written lives under .state/tmp only, never beside the finished ones.
            let exports = project.path().join("exports");
            assert!(
                !std::fs::read_dir(&exports)
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("partial"))
            );
            let partial: Vec<_> = std::fs::read_dir(exports.join(".state/tmp")).unwrap().flatten().collect();
            assert_eq!(partial.len(), 1, "{partial:?}");
        }
        let resumed = project.run(&["run", "--message-format", "json"]);
        assert_eq!(resumed.code, 0, "{fault}: {}", resumed.stderr);
        assert_eq!(artifacts(&project), expected, "{fault}: artifacts differ from an uninterrupted run");
        assert!(leftovers(&project.path().join("exports")).is_empty(), "{fault}: temporaries left");
        let outcomes = stage_outcomes(&resumed);
        match fault {
            "export-tensor:5" => assert!(outcomes.values().all(|o| o == "ran")),
            "report:1" => {
                let ran: Vec<_> =
                    outcomes.iter().filter(|(_, o)| *o == "ran").map(|(s, _)| s.as_str()).collect();
                assert_eq!(ran, ["report"], "{fault}");
            }
            // The first export was finished before the kill: it is not written again.
            _ => assert_eq!(outcomes["export:onnx-f32"], "skipped", "{fault}"),
        }
    }
}

/// The state letter of a process (`T` when stopped), from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

#[test]
fn two_runs_started_together_one_runs_the_other_is_refused_and_a_killed_holder_frees_the_lock() {
    let project = Project::new(TABLES);
    // Both stop themselves at their first merged tensor (after taking the lock, if they get it).
    let start = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-model-export"));
        cmd.current_dir(project.path())
            .args(["run", "-j", "1"])
            .env("MODEL_EXPORT_FAULT", "merge-tensor")
            .env("MODEL_EXPORT_FAULT_SIGNAL", "STOP")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let mut runs = [start(), start()];
    // Exactly one exits (refused); the other is stopped holding the lock. The overall bound only
    // keeps a broken build from hanging the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let (refused, holder) = loop {
        if let Some(status) = runs[0].try_wait().unwrap() {
            break (0, status);
        }
        if let Some(status) = runs[1].try_wait().unwrap() {
            break (1, status);
        }
        assert!(std::time::Instant::now() < deadline, "neither run was refused");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let (refused, status) = (refused, holder);
    let holder = 1 - refused;
    let holder_pid = runs[holder].id();
    while process_state(holder_pid) != Some('T') {
        assert!(runs[holder].try_wait().unwrap().is_none(), "the holder exited instead of holding the lock");
        assert!(std::time::Instant::now() < deadline, "the holder never stopped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(runs[refused].stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another run holds this out-dir's lock"), "{stderr}");
    assert!(stderr.contains(&format!("pid {holder_pid}, started at unix time")), "{stderr}");
    assert!(stderr.contains("run -j 1"), "the message names the holder's command: {stderr}");

    // SIGKILL the holder: the kernel frees its lock at once, whatever its lock file says.
    runs[holder].kill().unwrap();
    runs[holder].wait().unwrap();
    let state = project.path().join("exports/.state");
    assert!(state.join("lock").exists(), "a killed holder leaves its lock file behind");
    let taken = project.run(&["run"]);
    assert_eq!(taken.code, 0, "{}", taken.stderr);
    assert!(!state.join("lock").exists(), "the lock file is removed at the end");
}

#[test]
fn preflight_refuses_a_plan_larger_than_the_free_space_before_writing() {
    let project = Project::new(TABLES);
    let out = project.run_env(&["run"], &[("MODEL_EXPORT_TEST_FREE_BYTES", "100000")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not enough disk space in"), "{}", out.stderr);
    assert!(out.stderr.contains("97.7 KiB is free"), "{}", out.stderr);
    assert!(out.stderr.contains("point `out-dir`"), "{}", out.stderr);
    assert!(!project.path().join("exports").exists(), "preflight wrote something");

    let memory = project.run(&["run", "--max-memory", "1MB"]);
    assert_eq!(memory.code, 2, "{}", memory.stderr);
    assert!(memory.stderr.contains("more than max-memory (976.6 KiB)"), "{}", memory.stderr);
    assert!(!project.path().join("exports").exists());
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let project = Project::new(TABLES);
    let out = project.run(&["run", "--dry-run", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.json();
    let stages: Vec<_> =
        plan["stages"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        stages,
        [
            "export:onnx-f32",
            "validate:onnx-f32",
            "export:st-f16",
            "validate:st-f16",
            "export:onnx-int8",
            "validate:onnx-int8",
            "report"
        ]
    );
    // qwen3-tiny holds 98,688 parameters (tied head stored once): 4 bytes each in f32, and no
    // merged copy is written (exports stream from the base and the adapter).
    assert_eq!(plan["parameters"], 98_688);
    assert_eq!(plan["stages"][0]["estimated_bytes_written"], 98_688 * 4);
    assert_eq!(plan["stages"][0]["action"], "run");
    let reads = plan["stages"][0]["reads"].as_array().unwrap();
    assert!(reads[0].as_str().unwrap().ends_with("qwen3-tiny"), "{reads:?}");
    assert!(reads[1].as_str().unwrap().contains("qwen3-tiny-run"), "{reads:?}");
    assert!(!project.path().join("exports").exists());

    assert_eq!(project.run(&["run"]).code, 0);
    let done = project.run(&["run", "--dry-run"]);
    assert!(done.stdout.contains("plan: 0 of 7 stages run"), "{}", done.stdout);
}

#[test]
fn clean_removes_the_state_and_keeps_finished_exports_unless_asked() {
    let project = Project::new(TABLES);
    assert_eq!(project.run(&["run"]).code, 0);
    let out = project.path().join("exports");
    std::fs::create_dir_all(out.join(".onnx-f32.partial-x1")).unwrap();

    // The state holds the records and the cached reference run (the logits of the prompts).
    let cached = std::fs::metadata(out.join(".state/reference.bin")).unwrap().len();
    assert!(cached > 10_000, "{cached}");
    let cleaned = project.run(&["clean", "--message-format", "json"]);
    assert_eq!(cleaned.code, 0, "{}", cleaned.stderr);
    assert!(cleaned.json()["bytes_freed"].as_u64().unwrap() > cached, "{}", cleaned.stdout);
    assert!(!out.join(".state").exists() && !out.join(".onnx-f32.partial-x1").exists());
    assert!(!out.join("run.json").exists());
    for export in ["onnx-f32", "st-f16", "onnx-int8"] {
        assert!(out.join(export).join("manifest.json").is_file(), "{export} was removed");
    }

    let everything = project.run(&["clean", "--exports"]);
    assert_eq!(everything.code, 0, "{}", everything.stderr);
    assert!(everything.stdout.contains("removed"), "{}", everything.stdout);
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ctrl_c_stops_at_a_safe_point_removes_the_partial_export_and_says_how_to_resume() {
    let project = Project::new(TABLES);
    let stopped = project.run_env(
        &["run", "-j", "1"],
        &[("MODEL_EXPORT_FAULT", "export-tensor:5"), ("MODEL_EXPORT_FAULT_SIGNAL", "INT")],
    );
    assert_eq!(stopped.code, 130, "{}", stopped.stderr);
    // The signal is raised on the thread at the 5th tensor: the very next safe point stops,
    // before the 6th tensor of the export (in the merge plan's order).
    let base = model_export::model::ModelFolder::open(&crate::common::fixture("qwen3-tiny"), None).unwrap();
    let detection =
        model_export::checkpoint::detect(&crate::common::fixture("qwen3-tiny-run"), Some(&base)).unwrap();
    let plan = model_export::merge::plan_merge(&base, Some(&detection.adapter)).unwrap();
    let sixth = &plan.tensors[5].name;
    assert!(
        stopped
            .stderr
            .contains(&format!("stopped by SIGINT during `export:onnx-f32` before tensor `{sixth}`")),
        "{}",
        stopped.stderr
    );
    assert!(stopped.stderr.contains("run the same command again"), "{}", stopped.stderr);
    let out = project.path().join("exports");
    assert!(!out.join("onnx-f32").exists());
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    let resumed = project.run(&["run", "--message-format", "json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(stage_outcomes(&resumed)["export:onnx-f32"], "ran");
}

#[test]
fn exports_written_at_once_are_byte_identical_to_a_sequential_run() {
    let sequential = Project::new(TABLES);
    assert_eq!(sequential.run(&["run", "-j", "1"]).code, 0);
    let parallel = Project::new(&TABLES.replace("out-dir = \"exports\"", "out-dir = \"exports\"\njobs = 3"));
    let out = parallel.run(&["run", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let names: Vec<_> = out.json()["exports"].as_array().unwrap().iter().map(|e| e["name"].clone()).collect();
    assert_eq!(names, ["onnx-f32", "st-f16", "onnx-int8"], "results come back in declaration order");
    assert_eq!(artifacts(&parallel), artifacts(&sequential));

    let zero = sequential.run(&["run", "-j", "0"]);
    assert_eq!(zero.code, 2, "{}", zero.stderr);
    assert!(zero.stderr.contains("invalid `--jobs`"), "{}", zero.stderr);
}

/// Whether ONNX Runtime can run here (the suite requires it under CI=true).
fn ort_here() -> bool {
    let available = model_export::runtime::ort_engine::available();
    assert!(available || !crate::common::ci(), "ONNX Runtime is required under CI=true");
    available
}

#[test]
fn an_ort_target_graph_that_onnx_runtime_rejects_falls_back_to_portable() {
    if !ort_here() {
        return;
    }
    let tables = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "fused"
format = "onnx"
target = "ort"
"#;
    let project = Project::new(tables);
    let reject = [("MODEL_EXPORT_FAULT", "ort-check"), ("MODEL_EXPORT_FAULT_SIGNAL", "ERROR")];
    let out = project.run_env(&["run", "--message-format", "json"], &reject);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let export = &out.json()["exports"][0];
    assert_eq!(export["target"], "portable");
    assert_eq!(export["fallbacks"][0]["kind"], "portable-target");
    assert!(
        export["fallbacks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("ONNX Runtime rejected the `ort`-target graph"),
        "{export}"
    );
    assert_eq!(out.json()["validation"]["passed"], true);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path().join("exports/fused/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["provenance"]["options"]["target"], "portable");
    assert_eq!(manifest["provenance"]["options"]["fallbacks"][0]["kind"], "portable-target");

    let strict = Project::new(tables);
    let out = strict.run_env(&["run", "--no-fallback"], &reject);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("ort: injected fault (ort-check)"), "{}", out.stderr);
    assert!(!strict.path().join("exports/fused").exists());
}

#[test]
fn weights_past_the_protobuf_limit_fall_back_to_external_data() {
    let tables = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "embedded"
format = "onnx"
options = { external-data = false }
"#;
    // A 100 KB stand-in for the 2 GiB limit, so the tiny model passes it.
    let limit = [("MODEL_EXPORT_TEST_EMBEDDED_LIMIT", "100000")];
    let project = Project::new(tables);
    let out = project.run_env(&["run", "--message-format", "json"], &limit);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let export = &out.json()["exports"][0];
    assert_eq!(export["fallbacks"][0]["kind"], "external-data", "{export}");
    assert!(project.path().join("exports/embedded/model.onnx_data").is_file());

    let strict = Project::new(tables);
    let out = strict.run_env(&["run", "--no-fallback"], &limit);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("do not fit in a protobuf (2 GiB)"), "{}", out.stderr);
}

#[test]
fn a_graph_an_engine_cannot_load_at_its_opset_falls_back_to_opset_17() {
    let tables = |opset: u32| {
        format!(
            r#"
[package.metadata.model-export]
base = "{{fixtures}}/qwen3-tiny"
adapter = "{{fixtures}}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "onnx"
format = "onnx"
options = {{ opset = {opset} }}
"#
        )
    };
    let refuse = [("MODEL_EXPORT_FAULT", "tract-load"), ("MODEL_EXPORT_FAULT_SIGNAL", "ERROR")];
    let project = Project::new(&tables(21));
    let out = project.run_env(&["run", "--message-format", "json"], &refuse);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let export = &out.json()["exports"][0];
    assert_eq!(export["fallbacks"][0]["kind"], "opset", "{export}");
    let reason = export["fallbacks"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("tract could not load the graph at opset 21"), "{reason}");
    assert_eq!(out.json()["validation"]["passed"], true);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path().join("exports/onnx/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["provenance"]["options"]["opset"], 17);
    let model = std::fs::read(project.path().join("exports/onnx/model.onnx")).unwrap();
    let graph = <tract_onnx::pb::ModelProto as prost::Message>::decode(model.as_slice()).unwrap();
    assert_eq!(graph.opset_import[0].version, 17, "the written graph is stamped with the opset it uses");

    // The same refusal with nothing to fall back to (already at 17), or with --no-fallback, fails.
    for (opset, args) in [(17, vec!["run"]), (21, vec!["run", "--no-fallback"])] {
        let strict = Project::new(&tables(opset));
        let out = strict.run_env(&args, &refuse);
        assert_eq!(out.code, 1, "opset {opset}: {}", out.stderr);
        assert!(out.stderr.contains("tract could not load the model"), "{}", out.stderr);
        assert!(!strict.path().join("exports/onnx").exists());
    }
}

#[test]
fn transient_io_errors_are_retried_and_change_nothing() {
    let tables = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "st"
format = "safetensors"
"#;
    let clean = Project::new(tables);
    assert_eq!(clean.run(&["run"]).code, 0);
    let flaky = Project::new(tables);
    let out = flaky.run_env(
        &["run"],
        &[("MODEL_EXPORT_FAULT", "transient-io:2"), ("MODEL_EXPORT_FAULT_SIGNAL", "ERROR")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("(transient); retrying in 50 ms (1/3)"), "{}", out.stderr);
    assert_eq!(artifacts(&flaky), artifacts(&clean));
}

#[test]
fn a_changed_export_is_caught_by_its_stamp_or_by_verify_and_redone() {
    let project = Project::new(TABLES);
    assert_eq!(project.run(&["run", "-q"]).code, 0);
    let weights = project.path().join("exports/st-f16/model.safetensors");
    let pristine = std::fs::read(&weights).unwrap();
    // One byte flipped in the last tensor's data, same size, modification time put back.
    let flip = |restore_mtime: bool| {
        let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&weights, &bytes).unwrap();
        if restore_mtime {
            std::fs::File::options().write(true).open(&weights).unwrap().set_modified(mtime).unwrap();
        }
    };
    flip(true);
    let quick = project.run(&["run", "--message-format", "json"]);
    assert_eq!(quick.code, 0, "{}", quick.stderr);
    assert_eq!(stage_outcomes(&quick)["export:st-f16"], "skipped", "same size and mtime: not re-hashed");
    let verified = project.run(&["run", "--verify", "--message-format", "json"]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert_eq!(stage_outcomes(&verified)["export:st-f16"], "ran", "--verify re-hashes every output");
    assert_eq!(stage_outcomes(&verified)["export:onnx-f32"], "skipped");
    assert_eq!(std::fs::read(&weights).unwrap(), pristine, "the export was written again");

    // A change that moves the mtime is caught without --verify.
    flip(false);
    let touched = project.run(&["run", "--message-format", "json"]);
    assert_eq!(touched.code, 0, "{}", touched.stderr);
    assert_eq!(stage_outcomes(&touched)["export:st-f16"], "ran");
    assert_eq!(std::fs::read(&weights).unwrap(), pristine);
    // Touching without changing a byte re-hashes, finds the bytes intact, and skips.
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let same = project.run(&["run", "--message-format", "json"]);
    assert_eq!(stage_outcomes(&same)["export:st-f16"], "skipped");
}

#[test]
fn the_reference_is_computed_once_and_reused_when_an_export_is_validated_again() {
    let project = Project::new(TABLES);
    assert_eq!(project.run(&["run"]).code, 0);
    let cache = project.path().join("exports/.state/reference.bin");
    assert!(cache.is_file(), "the reference run is cached");
    // One export changes: it is written and validated again, against the cached reference (a
    // run that computed the reference would be killed at the `reference` fault point).
    std::fs::write(
        project.path().join("Cargo.toml"),
        std::fs::read_to_string(project.path().join("Cargo.toml"))
            .unwrap()
            .replace("dtype = \"f16\"", "dtype = \"bf16\""),
    )
    .unwrap();
    let again = project.run_env(&["run", "--message-format", "json"], &[("MODEL_EXPORT_FAULT", "reference")]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let outcomes = stage_outcomes(&again);
    assert_eq!(outcomes["validate:st-f16"], "ran");
    assert_eq!(outcomes["validate:onnx-f32"], "skipped");
    assert!(again.json()["validation"]["exports"][1]["passed"].as_bool().unwrap(), "{}", again.stdout);
    // Other prompts are another reference: computed again (and the fault point is reached).
    std::fs::write(
        project.path().join("Cargo.toml"),
        std::fs::read_to_string(project.path().join("Cargo.toml")).unwrap()
            + "\n[package.metadata.model-export.validate]\nprompts = [\"Other words\"]\n",
    )
    .unwrap();
    let other = project.run_env(&["run"], &[("MODEL_EXPORT_FAULT", "reference")]);
    assert_eq!(other.code, -1, "a new reference is computed: {}", other.stderr);
}

/// Under a memory budget an engine that cannot hold one export is not started, and says so with
/// its own figure; the run goes on (the other exports are written and measured), the ONNX export
/// is installed without being loaded back, and the unmeasured export fails the run by name.
#[test]
fn an_engine_over_max_memory_is_refused_by_name_and_the_rest_of_the_run_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let shape = model_export::synth::ModelShape::by_name("qwen3-12x512").unwrap();
    model_export::synth::write_model(shape, &dir.path().join("base"), 7, None).unwrap();
    // 151 MB of f32 weights: the streamed reference needs about 50 MiB, ONNX Runtime about
    // 1.75x the 151 MB ONNX file.
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{}\"\nout-dir = \"out\"\nmax-memory = \"120MiB\"\n\n\
         [package.metadata.model-export.validate]\nmax-new-tokens = 2\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx\"\nformat = \"onnx\"\noptions = {{ external-data = true }}\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n",
        dir.path().join("base").display()
    ));
    let plan = project.run(&["run", "--dry-run"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for engine in ["tract", "ort"] {
        let note =
            format!("export:onnx: not loaded back in {engine} before it is installed: the load needs about");
        assert!(plan.stdout.contains(&note), "{}", plan.stdout);
    }
    assert!(plan.stdout.contains("validate:onnx: not run in ort: that needs about"), "{}", plan.stdout);

    let out = project.run(&["run"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path().join("out/report.json")).unwrap()).unwrap();
    let exports = report["exports"].as_array().unwrap();
    assert_eq!(exports[0]["verdict"], "unverified", "{}", out.stdout);
    for engine in exports[0]["engines"].as_array().unwrap() {
        let why = engine["skipped"].as_str().unwrap();
        assert!(why.starts_with("needs about ") && why.contains("more than max-memory (120.0 MiB)"), "{why}");
    }
    assert_eq!(exports[1]["verdict"], "passed", "{}", out.stdout);
    assert!(project.path().join("out/onnx/model.onnx").is_file());
    assert!(
        out.stderr.contains("onnx (no engine measured it"),
        "the failure names the export: {}",
        out.stderr
    );
    assert!(out.stderr.contains("not loaded back in ort before it is installed"), "{}", out.stderr);
}
