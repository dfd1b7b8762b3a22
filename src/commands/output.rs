//! Shared rendering: JSON documents on stdout, and plain aligned tables for people.

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::error::Error;

pub fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::write(std::path::Path::new("<stdout>"), std::io::Error::other(e)))?;
    println!("{text}");
    Ok(())
}

/// A borderless table with a header rule: readable in terminals and in CI logs.
pub fn table<I: IntoIterator<Item = S>, S: ToString>(header: I) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::ASCII_MARKDOWN).set_header(header.into_iter().map(|s| s.to_string()));
    table
}

/// A two-column key/value table without a header.
pub fn facts() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table
}

/// `12345678` -> `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(98496), "98,496");
        assert_eq!(super::thousands(7), "7");
        assert_eq!(super::thousands(1_000_000), "1,000,000");
    }
}
