//! `presets`: the built-in presets, their purpose and exports.

use super::Context;
use super::output::{print_json, table};
use crate::error::Error;

pub fn run(ctx: &Context) -> Result<(), Error> {
    let presets = crate::presets::all()?;
    if ctx.json {
        let list: Vec<_> = presets
            .iter()
            .map(|p| {
                let exports: Vec<_> = p
                    .export
                    .iter()
                    .map(|e| serde_json::json!({ "name": e.name, "format": e.format, "dtype": e.dtype, "target": e.target }))
                    .collect();
                serde_json::json!({ "name": p.name, "description": p.description, "exports": exports, "validate": p.validate.is_some() })
            })
            .collect();
        return print_json(&list);
    }
    let mut t = table(["preset", "purpose", "exports"]);
    for p in &presets {
        let exports: Vec<String> = p
            .export
            .iter()
            .map(|e| {
                let mut parts = vec![e.format.to_string()];
                parts.extend(e.dtype.map(|d| d.to_string()));
                parts.extend(e.target.map(|t| t.to_string()));
                format!("{} ({})", e.name, parts.join(" "))
            })
            .collect();
        t.add_row([p.name.to_string(), p.description.clone(), exports.join("\n")]);
    }
    println!(
        "{t}\n\nUse one with `preset = \"NAME\"` in [package.metadata.model-export] or `cargo model-export init --preset NAME`."
    );
    Ok(())
}
