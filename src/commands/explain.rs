//! `explain [KEY]`: the documentation of a table key, from the key list the parser is checked
//! against.

use super::Context;
use super::output::{print_json, table};
use crate::config::keys::{KEYS, find};
use crate::error::{ConfigError, Error};

pub fn run(ctx: &Context, key: Option<&str>) -> Result<(), Error> {
    let Some(query) = key else {
        if ctx.json {
            let keys: Vec<_> = KEYS.iter().map(describe).collect();
            return print_json(&keys);
        }
        let mut t = table(["key", "type", "default"]);
        for k in KEYS {
            t.add_row([k.path(), k.kind.to_string(), k.default.to_string()]);
        }
        println!("{t}\n\n`cargo model-export explain KEY` prints one key in full.");
        return Ok(());
    };
    let doc = find(query).map_err(|keys| ConfigError::Invalid {
        origin: "the command line".into(),
        key: query.into(),
        message: "no such key, or a name several keys share".into(),
        help: format!("give one of: {}", keys.join(", ")),
    })?;
    if ctx.json {
        print_json(&describe(doc))
    } else {
        print!("{}", doc.explain());
        Ok(())
    }
}

fn describe(k: &crate::config::keys::KeyDoc) -> serde_json::Value {
    serde_json::json!({
        "key": k.path(),
        "table": k.section.table(),
        "type": k.kind,
        "default": k.default,
        "accepted": (k.accepted)(),
        "example": k.example,
        "meaning": k.meaning,
    })
}
