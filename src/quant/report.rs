//! What quantizing an export saved and what it cost: bytes before (f32, the precision of the
//! merge and of the reference) and after, per tensor group, and each tensor's relative error
//! ‖W−Ŵ‖/‖W‖. Written as `quantization.json` beside the export; `validate` adds the
//! end-to-end figures (cosine, top-1, greedy) in validation.md.

use serde::{Deserialize, Serialize};

use super::ErrorSums;
use crate::model::decoder::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorGroup {
    Embeddings,
    Attention,
    Mlp,
    Norms,
    LmHead,
    RopeTables,
    Other,
}

impl TensorGroup {
    /// The group of a tensor with decoder role `role`; `None`: one of the export's own tables.
    pub fn of(role: Option<Role>) -> Self {
        match role {
            Some(Role::Embedding) => TensorGroup::Embeddings,
            Some(Role::Head) => TensorGroup::LmHead,
            Some(Role::Norm) => TensorGroup::Norms,
            Some(Role::Projection { kind, .. } | Role::Bias { kind, .. }) if kind.in_attention() => {
                TensorGroup::Attention
            }
            Some(Role::Projection { .. } | Role::Bias { .. } | Role::Router { .. } | Role::Expert { .. }) => {
                TensorGroup::Mlp
            }
            None => TensorGroup::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TensorGroup::Embeddings => "embeddings",
            TensorGroup::Attention => "attention",
            TensorGroup::Mlp => "mlp",
            TensorGroup::Norms => "norms",
            TensorGroup::LmHead => "lm_head",
            TensorGroup::RopeTables => "rope tables",
            TensorGroup::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorQuant {
    pub name: String,
    pub group: TensorGroup,
    /// How it is stored: `f32`, `f16`, `int8-per-channel`, `int4-block32-asymmetric`, ...
    pub stored: String,
    pub shape: Vec<usize>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// ‖W−Ŵ‖/‖W‖; absent where the tensor is stored exactly.
    pub relative_error: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: TensorGroup,
    pub tensors: usize,
    pub stored: Vec<String>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub compression_ratio: f64,
    pub max_relative_error: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorSummary {
    /// Tensors stored inexactly.
    pub tensors: usize,
    pub mean_relative_error: f64,
    pub max_relative_error: f64,
    pub worst_tensor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantReport {
    pub dtype: String,
    /// The scheme's settings, as written in the export's manifest.
    pub scheme: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub compression_ratio: f64,
    pub groups: Vec<GroupSummary>,
    pub error: ErrorSummary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<TensorQuant>,
}

fn ratio(before: u64, after: u64) -> f64 {
    if after == 0 { 1.0 } else { before as f64 / after as f64 }
}

/// Collects tensors as they are written.
#[derive(Debug, Default)]
pub struct QuantReportBuilder {
    tensors: Vec<TensorQuant>,
}

impl QuantReportBuilder {
    pub fn push(
        &mut self,
        name: &str,
        group: TensorGroup,
        shape: &[usize],
        stored: &str,
        bytes_after: u64,
        error: Option<ErrorSums>,
    ) {
        let numel: usize = shape.iter().product();
        self.tensors.push(TensorQuant {
            name: name.to_string(),
            group,
            stored: stored.to_string(),
            shape: shape.to_vec(),
            bytes_before: 4 * numel as u64,
            bytes_after,
            relative_error: error.map(|e| e.relative_error()),
        });
    }

    pub fn finish(self, dtype: &str, scheme: &str) -> QuantReport {
        let mut groups: Vec<GroupSummary> = Vec::new();
        let mut sorted: Vec<&TensorQuant> = self.tensors.iter().collect();
        sorted.sort_by_key(|t| t.group);
        for t in sorted {
            let g = match groups.last_mut() {
                Some(g) if g.group == t.group => g,
                _ => {
                    groups.push(GroupSummary {
                        group: t.group,
                        tensors: 0,
                        stored: Vec::new(),
                        bytes_before: 0,
                        bytes_after: 0,
                        compression_ratio: 1.0,
                        max_relative_error: None,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.tensors += 1;
            g.bytes_before += t.bytes_before;
            g.bytes_after += t.bytes_after;
            if !g.stored.contains(&t.stored) {
                g.stored.push(t.stored.clone());
            }
            if let Some(e) = t.relative_error {
                g.max_relative_error = Some(g.max_relative_error.map_or(e, |m: f64| m.max(e)));
            }
            g.compression_ratio = ratio(g.bytes_before, g.bytes_after);
        }
        let inexact: Vec<(&str, f64)> =
            self.tensors.iter().filter_map(|t| t.relative_error.map(|e| (t.name.as_str(), e))).collect();
        let worst = inexact.iter().copied().fold(None, |w: Option<(&str, f64)>, (n, e)| match w {
            Some((_, m)) if m >= e => w,
            _ => Some((n, e)),
        });
        let error = ErrorSummary {
            tensors: inexact.len(),
            mean_relative_error: if inexact.is_empty() {
                0.0
            } else {
                inexact.iter().map(|(_, e)| e).sum::<f64>() / inexact.len() as f64
            },
            max_relative_error: worst.map_or(0.0, |(_, e)| e),
            worst_tensor: worst.map(|(n, _)| n.to_string()),
        };
        let (before, after) = (
            self.tensors.iter().map(|t| t.bytes_before).sum(),
            self.tensors.iter().map(|t| t.bytes_after).sum(),
        );
        QuantReport {
            dtype: dtype.to_string(),
            scheme: scheme.to_string(),
            bytes_before: before,
            bytes_after: after,
            compression_ratio: ratio(before, after),
            groups,
            error,
            tensors: self.tensors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::Projection;

    #[test]
    fn groups_sum_bytes_and_find_the_worst_tensor() {
        let mut b = QuantReportBuilder::default();
        let err = |e: f64, n: f64| ErrorSums { squared_error: e, squared_norm: n };
        let group = |role| TensorGroup::of(Some(role));
        let projection = |kind| Role::Projection { layer: 0, kind };
        b.push("model.embed_tokens.weight", group(Role::Embedding), &[10, 4], "f16", 80, Some(err(0.0, 1.0)));
        let q = group(projection(Projection::Q));
        b.push("model.layers.0.self_attn.q_proj.weight", q, &[4, 4], "int4", 16, Some(err(1.0, 100.0)));
        let up = group(projection(Projection::Up));
        b.push("model.layers.0.mlp.up_proj.weight", up, &[8, 4], "int4", 24, Some(err(4.0, 100.0)));
        b.push("model.layers.0.input_layernorm.weight", group(Role::Norm), &[4], "f32", 16, None);
        let r = b.finish("int4", "int4-block32-asymmetric");
        assert_eq!(r.bytes_before, 160 + 64 + 128 + 16);
        assert_eq!(r.bytes_after, 80 + 16 + 24 + 16);
        assert_eq!(r.groups.len(), 4);
        assert_eq!(r.groups[1].group, TensorGroup::Attention);
        assert_eq!(r.groups[1].compression_ratio, 4.0);
        assert_eq!(r.error.tensors, 3);
        assert!((r.error.max_relative_error - 0.2).abs() < 1e-12);
        assert_eq!(r.error.worst_tensor.as_deref(), Some("model.layers.0.mlp.up_proj.weight"));
        assert!((r.error.mean_relative_error - 0.1).abs() < 1e-12);
        assert_eq!(
            TensorGroup::of(Some(Role::Bias { layer: 2, kind: Projection::V })),
            TensorGroup::Attention
        );
        assert_eq!(TensorGroup::of(Some(projection(Projection::Down))), TensorGroup::Mlp);
    }
}
