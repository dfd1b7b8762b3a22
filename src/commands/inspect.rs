use super::Context;
use super::output::{facts, print_json, table, thousands};
use crate::cli::InspectArgs;
use crate::error::{ConfigError, Error};
use crate::inspect::{AdapterSummary, Inspection, ModelSummary, inspect};
use crate::profile::Profile;
use crate::size::human_bytes;

pub fn run(ctx: &Context, args: &InspectArgs) -> Result<(), Error> {
    let profile = match &args.profile {
        None => None,
        Some(name) if name == "auto" => None,
        Some(name) => Some(Profile::by_name(name).map_err(|e| ConfigError::Invalid {
            origin: "the command line".into(),
            key: "--profile".into(),
            message: e.to_string(),
            help: e.help(),
        })?),
    };
    let path = if args.path.is_absolute() { args.path.clone() } else { ctx.cwd.join(&args.path) };
    let inspection = inspect(&path, profile)?;
    if ctx.json {
        return print_json(&inspection);
    }
    match &inspection {
        Inspection::Model(m) => print_model(m),
        Inspection::Adapter(a) => print_adapter("adapter", a),
        Inspection::TrainingRun(run) => {
            println!("training run {}\n", run.path.display());
            let mut t = table(["checkpoint", "step", "status", "last loss", "reason"]);
            for cp in &run.checkpoints {
                let (status, reason) = match &cp.status {
                    crate::checkpoint::detect::CheckpointStatus::Chosen => ("chosen", String::new()),
                    crate::checkpoint::detect::CheckpointStatus::Older => ("valid", String::new()),
                    crate::checkpoint::detect::CheckpointStatus::Skipped(r) => ("broken", r.clone()),
                };
                let loss =
                    cp.trainer_state.as_ref().and_then(|s| s.last_loss).map_or("-".into(), |l| l.to_string());
                t.add_row([cp.name.clone(), cp.step.to_string(), status.into(), loss, reason]);
            }
            println!("{t}\n");
            print_adapter("newest valid checkpoint", &run.adapter);
        }
    }
    Ok(())
}

fn print_model(m: &ModelSummary) {
    println!("model {}\n", m.path.display());
    let mut t = facts();
    let dtypes = m.dtypes.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    for (k, v) in [
        (
            "architecture",
            format!("{} (profile {}, model_type {})", m.architectures.join(", "), m.profile, m.model_type),
        ),
        ("parameters", thousands(m.parameters)),
        ("dtypes", dtypes),
        ("bytes", format!("{} ({})", thousands(m.bytes), human_bytes(m.bytes))),
        ("tensors", format!("{} in {} file(s)", m.tensors, m.files)),
        ("layers", m.layers.to_string()),
        ("hidden / intermediate", format!("{} / {}", m.hidden_size, m.intermediate_size)),
        (
            "experts",
            m.experts.as_ref().map_or("none (dense)".into(), |e| {
                format!(
                    "{} per layer in {} layers, top {} ({}), width {}",
                    e.experts,
                    e.layers,
                    e.top_k,
                    if e.norm_topk_prob { "renormalised" } else { "not renormalised" },
                    e.width
                )
            }),
        ),
        ("heads / kv heads / head dim", format!("{} / {} / {}", m.attention_heads, m.kv_heads, m.head_dim)),
        ("vocabulary", m.vocab_size.to_string()),
        ("tied embeddings", m.tie_word_embeddings.to_string()),
        (
            "tokenizer files",
            if m.tokenizer_files.is_empty() { "none".into() } else { m.tokenizer_files.join(", ") },
        ),
        ("generation_config.json", if m.generation_config { "yes" } else { "no" }.into()),
    ] {
        t.add_row([k.to_string(), v]);
    }
    println!("{t}");
    if !m.problems.is_empty() {
        println!("\ntensors that do not fit the {} profile:", m.profile);
        for (tensor, problem) in &m.problems {
            println!("  {tensor}: {problem}");
        }
    }
}

fn print_adapter(title: &str, a: &AdapterSummary) {
    println!("{title} {}\n", a.path.display());
    let mut t = facts();
    let dtypes = a.dtypes.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut rows = vec![
        ("rank (r)", a.r.to_string()),
        ("lora_alpha", a.lora_alpha.to_string()),
        (
            "variant",
            match (a.use_rslora, a.use_dora) {
                (false, false) => "LoRA".to_string(),
                (true, false) => "rsLoRA".to_string(),
                (false, true) => "DoRA".to_string(),
                (true, true) => "DoRA + rsLoRA".to_string(),
            },
        ),
        ("target modules", a.target_modules.clone()),
        ("adapted modules", a.adapted_modules.to_string()),
        ("parameters", thousands(a.parameters)),
        ("dtypes", dtypes),
        ("bytes", format!("{} ({})", thousands(a.bytes), human_bytes(a.bytes))),
        ("tensors", a.tensors.to_string()),
        ("base model", a.base_model_name_or_path.clone().unwrap_or_else(|| "-".into())),
    ];
    if !a.rank_pattern.is_empty() {
        rows.push(("rank_pattern", format!("{:?}", a.rank_pattern)));
    }
    if !a.alpha_pattern.is_empty() {
        rows.push(("alpha_pattern", format!("{:?}", a.alpha_pattern)));
    }
    if !a.modules_to_save.is_empty() {
        rows.push(("modules_to_save", a.modules_to_save.join(", ")));
    }
    if let Some(s) = &a.trainer_state {
        rows.push(("global step", s.global_step.to_string()));
        rows.push(("last loss", s.last_loss.map_or("-".into(), |l| l.to_string())));
    }
    for (k, v) in rows {
        t.add_row([k.to_string(), v]);
    }
    println!("{t}");
}
