//! Generation for every engine: a left-padded batch with the KV cache, one sampler per row, and
//! the stopping rules (eos ids, stop strings, `max_new_tokens`), with text streamed as it comes.
//! Defaults come from the model's generation_config.json; options override them.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::batch::{Batch, positions_from_mask};
use super::engine::DecoderEngine;
use super::sampler::{Sampler, SamplingParams};
use crate::error::RuntimeError;
use crate::model::HfConfig;

/// What generation_config.json says (with config.json's eos/pad as the fallback).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationDefaults {
    pub sampling: SamplingParams,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
    pub max_new_tokens: usize,
}

/// When generation_config.json gives no length.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 128;

impl GenerationDefaults {
    /// Reads `dir/generation_config.json` (absent or unreadable: transformers' defaults).
    pub fn read(dir: &Path, config: &HfConfig) -> Self {
        let path = dir.join("generation_config.json");
        let g: Value = match crate::retry::read(&path) {
            Err(_) => Value::Null,
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: not valid JSON ({e}): generating with transformers' defaults",
                    path.display()
                );
                Value::Null
            }),
        };
        let mut eos: Vec<i64> = match &g["eos_token_id"] {
            Value::Array(ids) => ids.iter().filter_map(Value::as_i64).collect(),
            v => v.as_i64().into_iter().collect(),
        };
        if eos.is_empty() {
            eos = config.eos_token_ids.iter().map(|&e| i64::from(e)).collect();
        }
        let pad = g["pad_token_id"]
            .as_i64()
            .or(config.pad_token_id.map(i64::from))
            .or(eos.first().copied())
            .unwrap_or(0);
        let f = |key: &str, default: f32| g[key].as_f64().map_or(default, |v| v as f32);
        let sampling = SamplingParams {
            do_sample: g["do_sample"].as_bool().unwrap_or(false),
            temperature: f("temperature", 1.0),
            // transformers' default top_k is 50.
            top_k: g["top_k"].as_u64().map_or(50, |v| v as usize),
            top_p: f("top_p", 1.0),
            min_p: f("min_p", 0.0),
            repetition_penalty: f("repetition_penalty", 1.0),
            seed: 0,
        };
        let max_new_tokens = g["max_new_tokens"].as_u64().map_or(DEFAULT_MAX_NEW_TOKENS, |v| v as usize);
        Self { sampling, eos_token_ids: eos, pad_token_id: pad, max_new_tokens }
    }
}

/// Options of one `generate` call; `None` takes the model's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: Option<usize>,
    /// `Some(false)`: greedy. Default: generation_config.json's `do_sample`.
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// The same seed gives the same text (default 0).
    pub seed: Option<u64>,
    /// Generation of a row ends when its text contains one of these (cut before it).
    pub stop: Vec<String>,
    /// Replaces generation_config.json's eos ids.
    pub eos_token_ids: Option<Vec<i64>>,
    /// Wrap each prompt as a user message in the model's chat template.
    pub chat: bool,
    /// A system message before the user's, in chat mode.
    pub system: Option<String>,
}

impl GenerateOptions {
    /// Argmax decoding, as `generate(do_sample=False)`.
    pub fn greedy() -> Self {
        Self { do_sample: Some(false), ..Self::default() }
    }

    /// Sampling with the model's defaults and `seed`.
    pub fn sampled(seed: u64) -> Self {
        Self { do_sample: Some(true), seed: Some(seed), ..Self::default() }
    }

    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = Some(n);
        self
    }

    pub fn chat(mut self) -> Self {
        self.chat = true;
        self
    }

    pub fn stop(mut self, text: impl Into<String>) -> Self {
        self.stop.push(text.into());
        self
    }

    /// The sampling settings these options give over `defaults`, refusing values transformers
    /// also refuses (each error names the option).
    pub fn resolve(&self, defaults: &GenerationDefaults) -> Result<Resolved, RuntimeError> {
        let d = &defaults.sampling;
        let resolved = Resolved {
            sampling: SamplingParams {
                do_sample: self.do_sample.unwrap_or(d.do_sample),
                temperature: self.temperature.unwrap_or(d.temperature),
                top_k: self.top_k.unwrap_or(d.top_k),
                top_p: self.top_p.unwrap_or(d.top_p),
                min_p: self.min_p.unwrap_or(d.min_p),
                repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
                seed: self.seed.unwrap_or(d.seed),
            },
            eos_token_ids: self.eos_token_ids.clone().unwrap_or_else(|| defaults.eos_token_ids.clone()),
            pad_token_id: defaults.pad_token_id,
            max_new_tokens: self.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            stop: self.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
        };
        let s = &resolved.sampling;
        let bad = |option: &str, value: f32, range: &str| RuntimeError::Input {
            message: format!("{option} = {value} is not allowed: it must be {range}"),
        };
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(bad("temperature", s.temperature, "a finite number ≥ 0 (0: greedy)"));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(bad("top_p", s.top_p, "in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&s.min_p) {
            return Err(bad("min_p", s.min_p, "in [0, 1]"));
        }
        if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
            return Err(bad("repetition_penalty", s.repetition_penalty, "a finite number > 0 (1: off)"));
        }
        Ok(resolved)
    }
}

/// Settings with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub sampling: SamplingParams,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
}

/// Why a row stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum FinishReason {
    /// It produced one of the eos ids (the id is in `token_ids`, not in `text`).
    Eos(i64),
    /// Its text reached a stop string (the text is cut before it).
    Stop(String),
    /// `max_new_tokens` were generated.
    Length,
}

impl FinishReason {
    /// `eos`, `stop` or `length`, for summaries.
    pub fn label(&self) -> &'static str {
        match self {
            FinishReason::Eos(_) => "eos",
            FinishReason::Stop(_) => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The text the model was given (after the chat template, in chat mode).
    pub prompt: String,
    pub prompt_ids: Vec<i64>,
    /// The new tokens (an eos token included; those after a stop string too).
    pub token_ids: Vec<i64>,
    /// The new text, special tokens skipped, cut before a stop string.
    pub text: String,
    pub finish: FinishReason,
}

/// A piece of streamed output: the new token of `row` and the text it completed (empty when
/// the token only started a multi-byte character or might begin a stop string).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent<'a> {
    pub row: usize,
    pub token: i64,
    pub text: &'a str,
}

struct Row {
    sampler: Sampler,
    context: Vec<i64>,
    generated: Vec<i64>,
    text: String,
    streamed: usize,
    finish: Option<FinishReason>,
}

/// The text of `ids`; without a tokenizer (token-level callers such as the validator), none.
fn decode(tokenizer: Option<&Tokenizer>, ids: &[i64]) -> Result<String, RuntimeError> {
    let Some(tokenizer) = tokenizer else { return Ok(String::new()) };
    let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    tokenizer
        .decode(&ids, true)
        .map_err(|e| RuntimeError::Input { message: format!("cannot decode tokens: {e}") })
}

/// The length of `text` that can be shown now: without a trailing incomplete character
/// (decoded as U+FFFD) and without a suffix that may grow into a stop string.
fn settled_len(text: &str, stop: &[String]) -> usize {
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let mut held = end;
    for s in stop {
        for (i, _) in s.char_indices().skip(1) {
            if text[..end].ends_with(&s[..i]) {
                held = held.min(end - i);
            }
        }
    }
    held
}

/// Generates for `prompts` (token ids) as one left-padded batch through `engine`. Without a
/// tokenizer there is no text, and stop strings cannot match.
pub fn generate_batch(
    engine: &mut dyn DecoderEngine,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    settings: &Resolved,
    on_token: &mut dyn FnMut(StreamEvent<'_>),
) -> Result<Vec<(Vec<i64>, String, FinishReason)>, RuntimeError> {
    if prompts.iter().any(Vec::is_empty) {
        return Err(RuntimeError::Input { message: "a prompt has no tokens".into() });
    }
    engine.reset();
    let mut rows: Vec<Row> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Row {
            sampler: Sampler::new(&settings.sampling, i),
            context: p.clone(),
            generated: Vec::new(),
            text: String::new(),
            streamed: 0,
            finish: (settings.max_new_tokens == 0).then_some(FinishReason::Length),
        })
        .collect();
    let prompt = Batch::left_padded(prompts, settings.pad_token_id);
    let mut mask = prompt.attention_mask.clone();
    let mut step = prompt;
    while rows.iter().any(|r| r.finish.is_none()) {
        let logits = engine.step_last(&step)?;
        let mut next = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                next.push(vec![settings.pad_token_id]);
                mask[i].push(1);
                continue;
            }
            let token = row.sampler.next(logits.last(i), &row.context);
            row.context.push(token);
            row.generated.push(token);
            next.push(vec![token]);
            mask[i].push(1);
            if settings.eos_token_ids.contains(&token) {
                row.finish = Some(FinishReason::Eos(token));
            } else {
                row.text = decode(tokenizer, &row.generated)?;
                let hit = settings
                    .stop
                    .iter()
                    .filter_map(|s| row.text.find(s.as_str()).map(|at| (at, s)))
                    .min_by_key(|(at, _)| *at);
                if let Some((at, s)) = hit {
                    row.text.truncate(at);
                    row.finish = Some(FinishReason::Stop(s.clone()));
                } else if row.generated.len() == settings.max_new_tokens {
                    row.finish = Some(FinishReason::Length);
                }
            }
            let shown =
                if row.finish.is_some() { row.text.len() } else { settled_len(&row.text, &settings.stop) };
            // Decoding more tokens does not rewrite settled text in practice; if it did, the slice
            // might not fall on character boundaries, and nothing is streamed for it.
            let delta = row.text.get(row.streamed..shown).unwrap_or("");
            on_token(StreamEvent { row: i, token, text: delta });
            row.streamed = row.streamed.max(shown);
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let position_ids = positions_from_mask(&mask, 1);
        step = Batch { input_ids: next, attention_mask: mask.clone(), position_ids };
    }
    engine.reset();
    Ok(rows.into_iter().map(|r| (r.generated, r.text, r.finish.unwrap_or(FinishReason::Length))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_sampling_options_are_refused_by_name() {
        let defaults = GenerationDefaults {
            sampling: SamplingParams::default(),
            eos_token_ids: vec![1],
            pad_token_id: 0,
            max_new_tokens: 4,
        };
        let refused = |options: GenerateOptions| options.resolve(&defaults).unwrap_err().to_string();
        assert!(
            refused(GenerateOptions { temperature: Some(f32::NAN), ..Default::default() })
                .contains("temperature = NaN")
        );
        assert!(refused(GenerateOptions { top_p: Some(0.0), ..Default::default() }).contains("top_p = 0"));
        assert!(refused(GenerateOptions { min_p: Some(2.0), ..Default::default() }).contains("min_p = 2"));
        assert!(
            refused(GenerateOptions { repetition_penalty: Some(0.0), ..Default::default() })
                .contains("repetition_penalty")
        );
        assert!(GenerateOptions::sampled(3).resolve(&defaults).is_ok());
    }

    #[test]
    fn streamed_text_holds_back_partial_characters_and_stop_prefixes() {
        assert_eq!(settled_len("abc\u{FFFD}", &[]), 3);
        let stop = vec!["END".to_string()];
        assert_eq!(settled_len("hello E", &stop), 6);
        assert_eq!(settled_len("hello EN", &stop), 6);
        assert_eq!(settled_len("hello EX", &stop), 8);
    }
}
