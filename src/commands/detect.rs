use super::Context;
use super::output::{facts, print_json, table};
use crate::checkpoint::detect;
use crate::checkpoint::detect::{CheckpointStatus, Detection, SourceKind};
use crate::config::{Config, Overrides};
use crate::error::{ConfigError, Error};
use crate::model::ModelFolder;
use crate::model::layout::check_layout;

/// Opens the configured base and, when an adapter is configured, finds the checkpoint to
/// merge, checked against the base.
pub fn open_inputs(config: &Config) -> Result<(ModelFolder, Option<Detection>), Error> {
    let base = ModelFolder::open(&config.base.value, config.profile.value.profile())?;
    check_layout(&base)?;
    let detection = match &config.adapter.value {
        Some(adapter) => Some(detect(adapter, Some(&base))?),
        None => None,
    };
    Ok((base, detection))
}

/// Like `open_inputs`, for commands that need an adapter.
pub fn detect_configured(config: &Config) -> Result<(ModelFolder, Detection), Error> {
    let (base, detection) = open_inputs(config)?;
    let Some(detection) = detection else {
        return Err(ConfigError::Invalid {
            origin: config.origin(),
            key: "adapter".into(),
            message: "no adapter configured, so there is no checkpoint to detect".into(),
            help: "set `adapter` in [package.metadata.model-export], MODEL_EXPORT_ADAPTER, or pass --adapter"
                .into(),
        }
        .into());
    };
    Ok((base, detection))
}

pub fn run(ctx: &Context, overrides: &Overrides) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    let (base, detection) = detect_configured(&config)?;
    if ctx.json {
        return print_json(&detection);
    }
    print_human(&base, &detection);
    Ok(())
}

fn fmt_opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn print_human(base: &ModelFolder, d: &Detection) {
    let kind = match d.kind {
        SourceKind::AdapterFolder => "adapter folder",
        SourceKind::TrainingRun => "training run",
    };
    let mut t = facts();
    t.add_row(["source".to_string(), format!("{} ({kind})", d.source.display())]);
    t.add_row(["chosen".to_string(), d.chosen.display().to_string()]);
    if let Some(state) = &d.trainer_state {
        let steps = state.max_steps.map_or(String::new(), |m| format!(" of {m}"));
        t.add_row(["global step".to_string(), format!("{}{steps}", state.global_step)]);
        t.add_row(["epoch".to_string(), fmt_opt(state.epoch.map(|e| format!("{e:.3}")))]);
        t.add_row(["last loss".to_string(), fmt_opt(state.last_loss)]);
        t.add_row(["best checkpoint".to_string(), fmt_opt(state.best_model_checkpoint.as_deref())]);
    }
    let c = &d.adapter.config;
    t.add_row([
        "lora".to_string(),
        format!("r={} alpha={} targets: {}", c.r, c.lora_alpha, c.target_modules.describe()),
    ]);
    t.add_row(["fits base".to_string(), format!("yes: {} ({})", base.dir.display(), base.profile.name)]);
    println!("{t}");
    if d.checkpoints.is_empty() {
        return;
    }
    println!();
    let mut t = table(["checkpoint", "step", "status", "last loss", "reason"]);
    for cp in &d.checkpoints {
        let (status, reason) = match &cp.status {
            CheckpointStatus::Chosen => ("chosen", String::new()),
            CheckpointStatus::Older => ("older", String::new()),
            CheckpointStatus::Skipped(reason) => ("skipped", reason.clone()),
        };
        let loss = fmt_opt(cp.trainer_state.as_ref().and_then(|s| s.last_loss));
        t.add_row([cp.name.clone(), cp.step.to_string(), status.to_string(), loss, reason]);
    }
    println!("{t}");
}
