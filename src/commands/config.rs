use super::Context;
use super::output::{facts, print_json, table};
use crate::config::{Config, Overrides};
use crate::error::Error;

pub fn run(ctx: &Context, overrides: &Overrides) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    if ctx.json {
        print_json(&config)
    } else {
        print_human(&config);
        Ok(())
    }
}

pub fn print_human(config: &Config) {
    match (&config.package, &config.manifest) {
        (Some(package), Some(manifest)) => println!("package {package} ({})\n", manifest.display()),
        _ => println!("no Cargo package: configuration from flags and environment only\n"),
    }
    let v = &config.validate;
    let mut t = facts();
    let adapter = config
        .adapter
        .value
        .as_ref()
        .map_or("(none: export the base model)".to_string(), |p| p.display().to_string());
    let prompts = serde_json::to_string(&v.prompts.value).unwrap_or_default();
    let engines = v.engines.value.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ");
    for (key, value, source) in [
        ("base", config.base.value.display().to_string(), config.base.source.to_string()),
        ("adapter", adapter, config.adapter.source.to_string()),
        ("out-dir", config.out_dir.value.display().to_string(), config.out_dir.source.to_string()),
        ("profile", config.profile.value.name().to_string(), config.profile.source.to_string()),
        (
            "preset",
            config.preset.value.clone().unwrap_or_else(|| "(none)".into()),
            config.preset.source.to_string(),
        ),
        (
            "report-template",
            config.report_template.value.as_ref().map_or("(built-in)".into(), |p| p.display().to_string()),
            config.report_template.source.to_string(),
        ),
        ("validate.prompts", prompts, v.prompts.source.to_string()),
        ("validate.engines", engines, v.engines.source.to_string()),
        ("validate.max-new-tokens", v.max_new_tokens.value.to_string(), v.max_new_tokens.source.to_string()),
        ("validate.chat-template", v.chat_template.value.to_string(), v.chat_template.source.to_string()),
    ] {
        t.add_row([key.to_string(), value, format!("[{source}]")]);
    }
    println!("{t}\n");
    if config.exports.is_empty() {
        println!(
            "no exports declared: add [[package.metadata.model-export.export]] entries (see docs/config.md)"
        );
        return;
    }
    let mut t = table(["export", "format", "dtype", "target", "options", "source"]);
    for export in &config.exports {
        let e = &export.value;
        let options = serde_json::to_value(&e.options)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        t.add_row([
            e.name.clone(),
            e.format.to_string(),
            e.dtype.map_or("(base dtype)".into(), |d| d.to_string()),
            e.target.map_or("-".into(), |t| t.to_string()),
            if options.is_empty() { "-".into() } else { options },
            export.source.to_string(),
        ]);
    }
    println!("{t}");
}
