//! The documentation of every key of `[package.metadata.model-export]`: type, default, accepted
//! values, example and meaning. `explain KEY` prints it; a test checks that it lists exactly the
//! fields the parser's structs accept (and that docs/config.md lists each), so code and docs
//! cannot drift. Accepted values of closed sets come from the enums the parser uses.

use super::schema::{EmbeddingsMode, Engine, ExportDtype, Format, INT4_BLOCK_SIZES, ONNX_OPSETS, Target};

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Top,
    Validate,
    Export,
    Options,
}

impl Section {
    /// The TOML path of the section's table.
    pub fn table(self) -> &'static str {
        match self {
            Section::Top => "[package.metadata.model-export]",
            Section::Validate => "[package.metadata.model-export.validate]",
            Section::Export => "[[package.metadata.model-export.export]]",
            Section::Options => "[[package.metadata.model-export.export]] options",
        }
    }
}

pub struct KeyDoc {
    pub section: Section,
    /// The key as written in its table.
    pub name: &'static str,
    pub kind: &'static str,
    pub default: &'static str,
    /// Accepted values, computed from the parser's own sets where there is one.
    pub accepted: fn() -> String,
    /// A TOML value for the key (valid: the tests parse it).
    pub example: &'static str,
    pub meaning: &'static str,
}

impl KeyDoc {
    /// `validate.prompts`, `export.dtype`, `export.options.block-size`, `base`.
    pub fn path(&self) -> String {
        match self.section {
            Section::Top => self.name.to_string(),
            Section::Validate => format!("validate.{}", self.name),
            Section::Export => format!("export.{}", self.name),
            Section::Options => format!("export.options.{}", self.name),
        }
    }

    /// The text `explain` prints.
    pub fn explain(&self) -> String {
        let example = match self.section {
            Section::Top | Section::Validate => {
                format!("{}\n{} = {}", self.section.table(), self.name, self.example)
            }
            Section::Export => format!("{}\n{} = {}", self.section.table(), self.name, self.example),
            Section::Options => {
                format!(
                    "[[package.metadata.model-export.export]]\noptions = {{ {} = {} }}",
                    self.name, self.example
                )
            }
        };
        format!(
            "{}  ({})\n\n{}\n\ntype:     {}\ndefault:  {}\naccepted: {}\n\nexample:\n{}\n",
            self.path(),
            self.section.table(),
            self.meaning,
            self.kind,
            self.default,
            (self.accepted)(),
            indent(&example)
        )
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn any_path() -> String {
    "a folder path (relative to the manifest's folder)".into()
}
fn size() -> String {
    "a size: 5GB, 512MiB, 64KB, or a number of bytes".into()
}
fn boolean() -> String {
    "true, false".into()
}
fn positive() -> String {
    "an integer ≥ 1".into()
}
fn formats() -> String {
    Format::accepted()
}
fn dtypes() -> String {
    let by_format: Vec<String> = super::registry::FORMATS
        .iter()
        .map(|f| {
            format!("{}: {}", f.format, f.dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "))
        })
        .collect();
    format!("{} ({})", ExportDtype::accepted(), by_format.join("; "))
}
fn targets() -> String {
    Target::accepted()
}
fn engines() -> String {
    format!("a list of {}", Engine::accepted())
}
fn embeddings() -> String {
    EmbeddingsMode::accepted()
}
fn opsets() -> String {
    format!("{} to {}", ONNX_OPSETS.start(), ONNX_OPSETS.end())
}
fn blocks() -> String {
    INT4_BLOCK_SIZES.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}
fn profiles() -> String {
    let names: Vec<&str> = crate::profile::Profile::all().iter().map(|p| p.name).collect();
    format!("auto, {}", names.join(", "))
}
fn presets() -> String {
    crate::presets::names().join(", ")
}
fn strings() -> String {
    "a list of strings".into()
}
fn export_name() -> String {
    "letters, digits, `-`, `_`, `.`; unique among the exports".into()
}
fn fraction() -> String {
    "a number from 0 to 1".into()
}
fn non_negative() -> String {
    "a number ≥ 0".into()
}
fn accuracy() -> String {
    "0, 1, 2, 3, 4".into()
}
fn template_path() -> String {
    "a path to a minijinja template (relative to the manifest's folder)".into()
}

pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        section: Section::Top,
        name: "base",
        kind: "path",
        default: "(required)",
        accepted: any_path,
        example: "\"models/Qwen3-0.6B\"",
        meaning: "The Hugging Face model folder: config.json, model.safetensors or shards with model.safetensors.index.json, tokenizer files. Flag --base, env MODEL_EXPORT_BASE.",
    },
    KeyDoc {
        section: Section::Top,
        name: "adapter",
        kind: "path",
        default: "none (export the base model)",
        accepted: any_path,
        example: "\"runs/sft\"",
        meaning: "A PEFT adapter folder (adapter_config.json + adapter_model.safetensors), or a Trainer output folder with checkpoint-N folders: the newest valid one is merged. Flag --adapter, env MODEL_EXPORT_ADAPTER.",
    },
    KeyDoc {
        section: Section::Top,
        name: "out-dir",
        kind: "path",
        default: "<target-dir>/model-export",
        accepted: any_path,
        example: "\"target/model-export\"",
        meaning: "Where exports are written, one folder per export; must not be inside `base`. Flag --out-dir, env MODEL_EXPORT_OUT_DIR.",
    },
    KeyDoc {
        section: Section::Top,
        name: "profile",
        kind: "string",
        default: "auto",
        accepted: profiles,
        example: "\"auto\"",
        meaning: "The architecture profile: `auto` picks by config.json's model_type. Flag --profile, env MODEL_EXPORT_PROFILE.",
    },
    KeyDoc {
        section: Section::Top,
        name: "max-memory",
        kind: "size string",
        default: "the RAM available when `run` starts",
        accepted: size,
        example: "\"8GiB\"",
        meaning: "Peak memory the plan may need: `run` refuses a plan whose export stages or reference exceed it, before writing; an engine that would need more to hold one export is not started (that export is `unverified` unless another engine measured it), and an ONNX export too large to load back is installed without that check. Flag run --max-memory, env MODEL_EXPORT_MAX_MEMORY.",
    },
    KeyDoc {
        section: Section::Top,
        name: "jobs",
        kind: "integer",
        default: "1",
        accepted: positive,
        example: "2",
        meaning: "Exports written at once, all reading the one merge; output bytes are the same as with 1. Flag run -j, env MODEL_EXPORT_JOBS.",
    },
    KeyDoc {
        section: Section::Top,
        name: "allow-non-finite",
        kind: "boolean",
        default: "false",
        accepted: boolean,
        example: "false",
        meaning: "NaN/Inf in base or adapter weights are refused, naming the file, tensor and index; true exports them as they are. Env MODEL_EXPORT_ALLOW_NON_FINITE.",
    },
    KeyDoc {
        section: Section::Top,
        name: "preset",
        kind: "string",
        default: "none",
        accepted: presets,
        example: "\"onnx-cpu\"",
        meaning: "Adds a preset's exports (`cargo model-export presets` lists them); an [[export]] entry with the same name replaces the preset's.",
    },
    KeyDoc {
        section: Section::Top,
        name: "report-template",
        kind: "path",
        default: "the built-in templates/report.md.j2",
        accepted: template_path,
        example: "\"report.md.j2\"",
        meaning: "The minijinja template report.md is rendered from; its context is report.json's content.",
    },
    KeyDoc {
        section: Section::Top,
        name: "validate",
        kind: "table",
        default: "{}",
        accepted: || "the keys validate.* (cargo model-export explain validate.prompts ...)".into(),
        example: "{ max-new-tokens = 8 }",
        meaning: "How exports are validated against the candle reference.",
    },
    KeyDoc {
        section: Section::Top,
        name: "export",
        kind: "array of tables",
        default: "[]",
        accepted: || "entries with the keys export.* (cargo model-export explain export.format ...)".into(),
        example: "[{ name = \"onnx-f32\", format = \"onnx\" }]",
        meaning: "The artifacts to write, one [[package.metadata.model-export.export]] entry each, written to <out-dir>/<name>/.",
    },
    KeyDoc {
        section: Section::Validate,
        name: "prompts",
        kind: "list of strings",
        default: "[\"Hello\", \"用一句话解释LoRA\"]",
        accepted: strings,
        example: "[\"Hello\", \"What is LoRA?\"]",
        meaning: "Prompts of the validation batch. Env MODEL_EXPORT_VALIDATE_PROMPTS (a JSON array, or one prompt).",
    },
    KeyDoc {
        section: Section::Validate,
        name: "engines",
        kind: "list of strings",
        default: "all three",
        accepted: engines,
        example: "[\"ort\", \"tract\"]",
        meaning: "Engines every export is checked in. Env MODEL_EXPORT_VALIDATE_ENGINES (comma-separated).",
    },
    KeyDoc {
        section: Section::Validate,
        name: "max-new-tokens",
        kind: "integer",
        default: "16",
        accepted: positive,
        example: "16",
        meaning: "Greedy tokens generated and compared per prompt. Env MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS.",
    },
    KeyDoc {
        section: Section::Validate,
        name: "chat-template",
        kind: "boolean",
        default: "false",
        accepted: boolean,
        example: "true",
        meaning: "Wrap prompts in the model's chat template. Env MODEL_EXPORT_VALIDATE_CHAT_TEMPLATE.",
    },
    KeyDoc {
        section: Section::Validate,
        name: "text",
        kind: "path",
        default: "(none: the prompts only)",
        accepted: || "a UTF-8 text file, relative to the manifest".into(),
        example: "\"eval/held-out.txt\"",
        meaning: "Held-out text scored in chunks of text-context tokens by the reference and every export in every engine: perplexity, its change, mean and 99th-percentile KL divergence and top-1 agreement (as llama-perplexity --kl-divergence reports them). Flag: validate/run --text.",
    },
    KeyDoc {
        section: Section::Validate,
        name: "text-context",
        kind: "integer",
        default: "512",
        accepted: || "2 up to the model's max_position_embeddings".into(),
        example: "128",
        meaning: "Tokens per chunk of validate.text; each token after a chunk's first is predicted from those before it. Flag: validate/run --text-context.",
    },
    KeyDoc {
        section: Section::Validate,
        name: "text-chunks",
        kind: "integer",
        default: "(every whole chunk)",
        accepted: positive,
        example: "48",
        meaning: "Score only the first N chunks of validate.text (llama-perplexity's --chunks). Flag: validate/run --text-chunks.",
    },
    KeyDoc {
        section: Section::Export,
        name: "name",
        kind: "string",
        default: "(required)",
        accepted: export_name,
        example: "\"onnx-int4\"",
        meaning: "The export's folder name under out-dir.",
    },
    KeyDoc {
        section: Section::Export,
        name: "format",
        kind: "string",
        default: "(required)",
        accepted: formats,
        example: "\"onnx\"",
        meaning: "What to write: a Hugging Face safetensors folder, an ONNX model with KV cache, or a GGUF file for llama.cpp.",
    },
    KeyDoc {
        section: Section::Export,
        name: "dtype",
        kind: "string",
        default: "safetensors and gguf: the base's storage dtype; onnx: f32",
        accepted: dtypes,
        example: "\"int4\"",
        meaning: "Weight type; int8/int4 are ONNX's quantizations, q8_0/q4_0/q4_k/q6_k llama.cpp's (gguf only); safetensors takes f32, f16, bf16.",
    },
    KeyDoc {
        section: Section::Export,
        name: "target",
        kind: "string",
        default: "portable (onnx only)",
        accepted: targets,
        example: "\"ort\"",
        meaning: "portable: standard ONNX ops, runs in ONNX Runtime and tract; ort: ONNX Runtime's fused com.microsoft operators.",
    },
    KeyDoc {
        section: Section::Export,
        name: "options",
        kind: "table",
        default: "{}",
        accepted: || "the keys export.options.* (cargo model-export explain export.options.opset ...)".into(),
        example: "{ block-size = 32 }",
        meaning: "Format-specific settings and validation tolerances of this export.",
    },
    KeyDoc {
        section: Section::Options,
        name: "max-shard-size",
        kind: "size string",
        default: "one file",
        accepted: size,
        example: "\"5GB\"",
        meaning: "safetensors: split weights into shards no larger than this, with model.safetensors.index.json.",
    },
    KeyDoc {
        section: Section::Options,
        name: "opset",
        kind: "integer",
        default: "17",
        accepted: opsets,
        example: "17",
        meaning: "onnx: the ONNX opset of the graph.",
    },
    KeyDoc {
        section: Section::Options,
        name: "external-data",
        kind: "boolean",
        default: "above 256 MiB of weights; always above 2 GiB",
        accepted: boolean,
        example: "true",
        meaning: "onnx: store weights in model.onnx_data beside model.onnx.",
    },
    KeyDoc {
        section: Section::Options,
        name: "block-size",
        kind: "integer",
        default: "32",
        accepted: blocks,
        example: "32",
        meaning: "int4, and int8 with target = \"ort\": weights per quantization block.",
    },
    KeyDoc {
        section: Section::Options,
        name: "symmetric",
        kind: "boolean",
        default: "false",
        accepted: boolean,
        example: "false",
        meaning: "int4, and int8 with target = \"ort\": blocks without an offset (false: asymmetric, more exact, and the one tract runs).",
    },
    KeyDoc {
        section: Section::Options,
        name: "embeddings",
        kind: "string",
        default: "auto",
        accepted: embeddings,
        example: "\"f16\"",
        meaning: "int8/int4: how the embedding table and the output head are stored. target \"ort\": quantized (auto from 100M parameters; f16 below) keeps the table in the export's blocks, looked up by GatherBlockQuantized and multiplied by a tied head; int8 in 8-bit blocks (4x less KL on the trained fixture, a larger head); f16 both in f16. target \"portable\": quantized quantizes the head only (the table stays f16); auto is f16 below 1B parameters.",
    },
    KeyDoc {
        section: Section::Options,
        name: "accuracy-level",
        kind: "integer",
        default: "4",
        accepted: accuracy,
        example: "0",
        meaning: "int8/int4 with target = \"ort\": MatMulNBits' accuracy_level (4: int8 activations, twice as fast, KL +1% on the trained fixture; 0: f32 activations, exact).",
    },
    KeyDoc {
        section: Section::Options,
        name: "max-abs-error",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: non_negative,
        example: "0.0001",
        meaning: "validation: the largest allowed absolute logit error against the reference (replaces the relative bound when set).",
    },
    KeyDoc {
        section: Section::Options,
        name: "max-relative-error",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: non_negative,
        example: "0.0001",
        meaning: "validation: the largest allowed logit error relative to the reference's scale, max |error| / max(1, RMS of the reference logits).",
    },
    KeyDoc {
        section: Section::Options,
        name: "min-cosine",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: fraction,
        example: "0.999",
        meaning: "validation: the smallest allowed mean cosine similarity of the logits.",
    },
    KeyDoc {
        section: Section::Options,
        name: "min-top1",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: fraction,
        example: "0.95",
        meaning: "validation: the smallest allowed top-1 agreement.",
    },
    KeyDoc {
        section: Section::Options,
        name: "max-mean-kl",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: non_negative,
        example: "0.05",
        meaning: "validation: the largest allowed mean KL divergence from the reference's token distributions, in nats (on validate.text when set, else on the prompts).",
    },
    KeyDoc {
        section: Section::Options,
        name: "min-text-top1",
        kind: "number",
        default: "by dtype (docs/validation.md)",
        accepted: fraction,
        example: "0.9",
        meaning: "validation: the smallest allowed top-1 agreement on validate.text (every position).",
    },
];

/// The key `query` names: a full path (`export.options.opset`), or a name unique among the
/// keys (`opset`, `prompts`).
pub fn find(query: &str) -> Result<&'static KeyDoc, Vec<String>> {
    let query = query.trim().trim_start_matches("package.metadata.model-export.");
    if let Some(key) = KEYS.iter().find(|k| k.path() == query) {
        return Ok(key);
    }
    let by_name: Vec<&KeyDoc> =
        KEYS.iter().filter(|k| k.name == query || k.path().ends_with(&format!(".{query}"))).collect();
    match by_name.as_slice() {
        [one] => Ok(one),
        _ => Err(KEYS.iter().map(KeyDoc::path).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::ExportOptions;
    use crate::config::table::{ExportEntry, TableLayer, ValidateLayer};
    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};

    /// The field names a serde struct accepts, read by asking it to deserialize itself.
    fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Recorder<'a>(&'a mut &'static [&'static str]);
        impl<'de> Deserializer<'de> for Recorder<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("only structs"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
                ignored_any
            }
        }
        let mut out: &'static [&'static str] = &[];
        let _ = T::deserialize(Recorder(&mut out));
        out
    }

    fn documented(section: Section) -> Vec<&'static str> {
        let mut names: Vec<_> = KEYS.iter().filter(|k| k.section == section).map(|k| k.name).collect();
        names.sort();
        names
    }

    fn parsed(fields: &[&str]) -> Vec<&'static str> {
        // serde reports kebab-case names as written in TOML.
        let mut names: Vec<&'static str> =
            fields.iter().map(|f| KEYS.iter().map(|k| k.name).find(|n| n == f).unwrap_or("?")).collect();
        names.sort();
        assert!(!names.contains(&"?"), "undocumented field among {fields:?}");
        names
    }

    #[test]
    fn every_key_the_parser_accepts_is_documented_and_nothing_else() {
        assert_eq!(parsed(fields::<TableLayer>()), documented(Section::Top));
        assert_eq!(parsed(fields::<ValidateLayer>()), documented(Section::Validate));
        assert_eq!(parsed(fields::<ExportEntry>()), documented(Section::Export));
        assert_eq!(parsed(fields::<ExportOptions>()), documented(Section::Options));
    }

    #[test]
    fn every_example_parses_where_it_belongs() {
        use serde_json::{Value, json};
        for key in KEYS {
            let example: toml::Table = toml::from_str(&format!("v = {}", key.example))
                .unwrap_or_else(|e| panic!("{}: the example does not parse: {e}", key.path()));
            let value = serde_json::to_value(&example["v"]).unwrap();
            let mut entry = json!({ "name": "x", "format": "onnx" });
            let table: Value = match key.section {
                Section::Top => json!({ key.name: value }),
                Section::Validate => json!({ "validate": { key.name: value } }),
                Section::Export => {
                    entry[key.name] = value;
                    json!({ "export": [entry] })
                }
                Section::Options => {
                    entry["options"] = json!({ key.name: value });
                    json!({ "export": [entry] })
                }
            };
            crate::config::table::parse_table(&table, "t", "test")
                .unwrap_or_else(|e| panic!("{}: {e}", key.path()));
        }
    }

    #[test]
    fn the_docs_config_reference_lists_every_key_in_its_section() {
        let docs = include_str!("../../docs/config.md");
        let heading = |section: Section| match section {
            Section::Top => "## Top-level keys",
            Section::Validate => "## `[package.metadata.model-export.validate]`",
            Section::Export => "## `[[package.metadata.model-export.export]]`",
            Section::Options => "### `options`",
        };
        for key in KEYS {
            let start =
                docs.find(heading(key.section)).unwrap_or_else(|| panic!("no section for {}", key.path()));
            let rest = &docs[start + 3..];
            let end = rest.find("\n#").unwrap_or(rest.len());
            assert!(
                rest[..end].contains(&format!("| `{}` |", key.name)),
                "docs/config.md does not list `{}` under {}",
                key.path(),
                heading(key.section)
            );
        }
    }

    #[test]
    fn keys_are_found_by_path_or_unique_name() {
        assert_eq!(find("export.options.opset").unwrap().name, "opset");
        assert_eq!(find("opset").unwrap().path(), "export.options.opset");
        assert_eq!(find("package.metadata.model-export.base").unwrap().name, "base");
        assert!(find("nope").is_err());
        let text = find("dtype").unwrap().explain();
        assert!(text.contains("accepted: f32, f16, bf16, int8, int4"), "{text}");
    }
}
