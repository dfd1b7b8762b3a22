//! `init`: the wizard (dialoguer) and its non-interactive form (`--preset --base --adapter
//! --yes`). Both check every answer with `crate::init` and write through `toml_edit`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Select};

use super::Context;
use super::output::print_json;
use crate::cli::InitArgs;
use crate::config::resolve::DEFAULT_PROMPTS;
use crate::config::schema::{Format, Target};
use crate::error::{ConfigError, Error};
use crate::init::{
    Answers, ChosenExport, check_adapter, check_base, check_disk, manifest_edit, planned_exports,
    render_table, scan,
};
use crate::model::ModelFolder;

fn usage(message: &str, help: &str) -> Error {
    ConfigError::Invalid {
        origin: "the command line".into(),
        key: "init".into(),
        message: message.into(),
        help: help.into(),
    }
    .into()
}

fn prompt_error(e: dialoguer::Error) -> Error {
    let dialoguer::Error::IO(io) = e;
    Error::write(Path::new("<terminal>"), io)
}

pub fn run(ctx: &Context, args: &InitArgs) -> Result<(), Error> {
    let manifest = ctx.manifest_path.clone().unwrap_or_else(|| ctx.cwd.join("Cargo.toml"));
    let manifest_dir =
        manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    // An existing table is refused before any question is asked.
    manifest_edit::check_writable(&manifest, args.force)?;
    let answers = if args.yes {
        from_flags(args, &manifest_dir)?
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        wizard(args, &manifest_dir)?
    } else {
        return Err(usage(
            "there is no terminal to ask the questions on",
            "give the answers as flags: init --preset NAME --base PATH [--adapter PATH] [--prompt TEXT]... --yes",
        ));
    };
    let table = render_table(&answers, &manifest_dir)?;
    let edit = manifest_edit::plan(&manifest, &table, args.force)?;
    if ctx.json {
        manifest_edit::apply(&edit)?;
        return print_json(&serde_json::json!({ "manifest": manifest, "table": table }));
    }
    eprintln!("{}", manifest_edit::diff(&edit));
    if !args.yes {
        let write = Confirm::with_theme(&ColorfulTheme::default())
            .with_prompt(format!("Write {}?", manifest.display()))
            .default(true)
            .interact()
            .map_err(prompt_error)?;
        if !write {
            eprintln!("nothing written");
            return Ok(());
        }
    }
    manifest_edit::apply(&edit)?;
    eprintln!(
        "wrote [package.metadata.model-export] to {}\nnext: `cargo model-export run --dry-run` shows the plan, `cargo model-export run` runs it",
        manifest.display()
    );
    Ok(())
}

fn default_prompts(args: &InitArgs) -> Result<Vec<String>, Error> {
    if args.prompts.iter().any(|p| p.trim().is_empty()) {
        return Err(usage("a --prompt is empty", "give every --prompt some text"));
    }
    Ok(prompts_or_default(args))
}

fn prompts_or_default(args: &InitArgs) -> Vec<String> {
    if args.prompts.is_empty() {
        DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompts.clone()
    }
}

fn from_flags(args: &InitArgs, manifest_dir: &Path) -> Result<Answers, Error> {
    let (Some(base), Some(preset)) = (&args.base, &args.preset) else {
        return Err(usage(
            "--yes needs --base and --preset",
            &format!("give --base PATH and --preset NAME (one of {})", crate::presets::names().join(", ")),
        ));
    };
    let base_folder = check_base(base)?;
    if let Some(adapter) = &args.adapter {
        check_adapter(adapter, &base_folder)?;
    }
    let answers = Answers {
        base: base.clone(),
        adapter: args.adapter.clone(),
        preset: Some(preset.clone()),
        exports: Vec::new(),
        prompts: default_prompts(args)?,
    };
    check_disk(
        &base_folder,
        &planned_exports(&answers)?,
        answers.adapter.is_some(),
        &manifest_dir.join("target"),
    )?;
    Ok(answers)
}

/// One item of `items`, the first preselected.
fn choose<T: std::fmt::Display>(theme: &ColorfulTheme, prompt: &str, items: &[T]) -> Result<usize, Error> {
    Select::with_theme(theme).with_prompt(prompt).items(items).default(0).interact().map_err(prompt_error)
}

/// Asks for a path until `check` accepts it, showing why it did not.
fn ask_path<T>(
    theme: &ColorfulTheme,
    what: &str,
    check: impl Fn(&Path) -> Result<T, Error>,
) -> Result<(PathBuf, T), Error> {
    loop {
        let text: String =
            Input::with_theme(theme).with_prompt(what).interact_text().map_err(prompt_error)?;
        let path = PathBuf::from(text.trim());
        match check(&path) {
            Ok(value) => return Ok((path, value)),
            Err(e) => eprintln!("  ✗ {e}\n    {}", e.help()),
        }
    }
}

fn wizard(args: &InitArgs, manifest_dir: &Path) -> Result<Answers, Error> {
    let theme = ColorfulTheme::default();
    let mut roots = vec![manifest_dir.to_path_buf()];
    roots.extend(args.paths.iter().cloned());
    eprintln!(
        "Looking for models and training runs under {} …",
        roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let found = scan::scan(&roots);

    // Base model.
    let other = "another folder…";
    let mut items: Vec<String> =
        found.models.iter().map(|c| format!("{}  ({})", c.path.display(), c.summary)).collect();
    items.push(other.into());
    let choice = choose(&theme, "Base model", &items)?;
    let (base, base_folder): (PathBuf, ModelFolder) = match found.models.get(choice) {
        Some(c) => match check_base(&c.path) {
            Ok(folder) => (c.path.clone(), folder),
            Err(e) => {
                eprintln!("  ✗ {e}");
                ask_path(&theme, "Base model folder", check_base)?
            }
        },
        None => ask_path(&theme, "Base model folder", check_base)?,
    };
    eprintln!("  ✓ {}", scan::describe_model(&base));

    // Adapter or training run.
    let mut items: Vec<String> =
        found.adapters.iter().map(|c| format!("{}  ({})", c.path.display(), c.summary)).collect();
    items.push("none: export the base model".into());
    items.push(other.into());
    let choice = choose(&theme, "Adapter or training run", &items)?;
    let fits = |p: &Path| check_adapter(p, &base_folder);
    let adapter = if choice < found.adapters.len() {
        let path = found.adapters[choice].path.clone();
        match fits(&path) {
            Ok(d) => {
                eprintln!("  ✓ merges {}", d.chosen.display());
                Some(path)
            }
            Err(e) => {
                eprintln!("  ✗ {e}\n    {}", e.help());
                let (path, d) = ask_path(&theme, "Adapter folder or training run", fits)?;
                eprintln!("  ✓ merges {}", d.chosen.display());
                Some(path)
            }
        }
    } else if choice == found.adapters.len() {
        None
    } else {
        let (path, d) = ask_path(&theme, "Adapter folder or training run", fits)?;
        eprintln!("  ✓ merges {}", d.chosen.display());
        Some(path)
    };

    // Exports: a preset or one by one, until they fit on disk.
    let (preset, exports) = loop {
        let presets = crate::presets::all()?;
        let mut items: Vec<String> =
            presets.iter().map(|p| format!("preset {}: {}", p.name, p.description)).collect();
        items.push("choose exports one by one".into());
        let choice = choose(&theme, "Exports", &items)?;
        let (preset, exports) = match presets.get(choice) {
            Some(p) => (Some(p.name.to_string()), Vec::new()),
            None => (None, ask_exports(&theme)?),
        };
        let answers = Answers {
            base: base.clone(),
            adapter: adapter.clone(),
            preset: preset.clone(),
            exports: exports.clone(),
            prompts: Vec::new(),
        };
        match check_disk(
            &base_folder,
            &planned_exports(&answers)?,
            adapter.is_some(),
            &manifest_dir.join("target"),
        ) {
            Ok(()) => break (preset, exports),
            Err(e) => eprintln!("  ✗ {e}\n    {}", e.help()),
        }
    };

    let prompts: String = Input::with_theme(&theme)
        .with_prompt("Validation prompts (separated by |)")
        .default(default_prompts(args)?.join("|"))
        .validate_with(|text: &String| -> Result<(), String> {
            if text.split('|').any(|p| p.trim().is_empty()) {
                Err("every prompt needs some text".into())
            } else {
                Ok(())
            }
        })
        .interact_text()
        .map_err(prompt_error)?;
    let prompts = prompts.split('|').map(|p| p.trim().to_string()).collect();
    Ok(Answers { base, adapter, preset, exports, prompts })
}

fn ask_exports(theme: &ColorfulTheme) -> Result<Vec<ChosenExport>, Error> {
    let mut exports: Vec<ChosenExport> = Vec::new();
    loop {
        let formats = Format::ALL;
        let f = choose(theme, "Format", &formats.iter().map(|f| f.as_str()).collect::<Vec<_>>())?;
        let format = formats[f];
        let dtypes = format.info().dtypes;
        let d = choose(theme, "dtype", &dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>())?;
        let dtype = dtypes[d];
        let targets = format.info().targets;
        let target = if targets.is_empty() {
            None
        } else {
            let t = choose(theme, "target", &targets.iter().map(|t| t.as_str()).collect::<Vec<_>>())?;
            Some(targets[t])
        };
        let suggested = match target {
            Some(Target::Ort) => format!("{format}-{dtype}-ort"),
            _ => format!("{format}-{dtype}"),
        };
        let taken: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
        let name: String = Input::with_theme(theme)
            .with_prompt("Name (the folder under out-dir)")
            .default(suggested)
            .validate_with(move |n: &String| -> Result<(), String> {
                if !crate::config::resolve::is_valid_name(n) {
                    Err("use letters, digits, -, _ and ., not starting with .".into())
                } else if taken.contains(n) {
                    Err(format!("`{n}` is taken"))
                } else {
                    Ok(())
                }
            })
            .interact_text()
            .map_err(prompt_error)?;
        exports.push(ChosenExport { name, format, dtype: Some(dtype), target });
        let more = Confirm::with_theme(theme)
            .with_prompt("Add another export?")
            .default(false)
            .interact()
            .map_err(prompt_error)?;
        if !more {
            return Ok(exports);
        }
    }
}
