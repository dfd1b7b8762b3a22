//! The memory a load will take, known before anything is allocated: every tensor's shape comes
//! from the safetensors headers (or config.json), its placement from the quantization rules,
//! plus the merge's f32 block of rows and its converted copy (tensors arrive in blocks of at
//! most `BLOCK_ELEMENTS` values, and no whole tensor is ever held in f32 unless it stays f32).
//! A plan over the budget is refused with the mode that would fit.

use candle_core::DType;
use serde::Serialize;

use super::quantization::{FormatFallback, Placement, Quantization, Role, placement};
use crate::error::LoadError;
use crate::size::human_bytes;

/// A tensor to load: name, shape, what kind of weight it is for placement, and the group
/// `info()` reports it under (from the decoder's description).
#[derive(Debug, Clone)]
pub struct PlannedWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    pub group: &'static str,
}

impl PlannedWeight {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The group `info()` reports it under.
    pub fn group(&self) -> &'static str {
        self.group
    }
}

/// Where every tensor goes and what it costs.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub weights: Vec<(PlannedWeight, Placement)>,
    pub fallbacks: Vec<FormatFallback>,
    /// Resident bytes of the loaded weights.
    pub resident: u64,
    /// Resident plus the transient block of rows (f32, and its converted copy).
    pub peak: u64,
}

impl LoadPlan {
    pub fn new(weights: &[PlannedWeight], quantization: Quantization, dtype: DType) -> Self {
        let mut placed = Vec::with_capacity(weights.len());
        let mut fallbacks = Vec::new();
        let mut resident = 0;
        let mut block = 0;
        for w in weights {
            let (placement, fallback) = placement(quantization, dtype, w.role, &w.name, &w.shape);
            resident += placement.bytes(w.elements());
            block = block.max(w.elements().min(crate::merge::execute::BLOCK_ELEMENTS) as u64);
            fallbacks.extend(fallback);
            placed.push((w.clone(), placement));
        }
        Self { weights: placed, fallbacks, resident, peak: resident + 2 * 4 * block }
    }
}

/// A mode's estimate, for the messages.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub mode: String,
    pub bytes: u64,
}

/// Refuses `plan` when its peak passes `budget`, suggesting the most precise mode that fits.
pub fn check(
    what: &str,
    mode: &str,
    plan: &LoadPlan,
    budget: u64,
    alternatives: &[Estimate],
) -> Result<(), LoadError> {
    if plan.peak <= budget {
        return Ok(());
    }
    let fits = alternatives.iter().find(|a| a.bytes <= budget);
    let suggestion = match fits {
        Some(a) => format!(
            "load with quantization = \"{}\" (needs {}), or raise max-memory",
            a.mode,
            human_bytes(a.bytes)
        ),
        None => {
            let smallest = alternatives.iter().min_by_key(|a| a.bytes);
            format!(
                "no quantization fits: the smallest, {}, needs {}; raise max-memory or use a machine with more memory",
                smallest.map_or("q4_0", |a| a.mode.as_str()),
                human_bytes(smallest.map_or(plan.peak, |a| a.bytes))
            )
        }
    };
    Err(LoadError::Budget { what: what.into(), mode: mode.into(), needed: plan.peak, budget, suggestion })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> Vec<PlannedWeight> {
        vec![
            PlannedWeight {
                name: "embed".into(),
                shape: vec![1000, 256],
                role: Role::Embedding,
                group: "embeddings",
            },
            PlannedWeight {
                name: "l.self_attn.q".into(),
                shape: vec![256, 256],
                role: Role::Linear,
                group: "attention",
            },
            PlannedWeight {
                name: "norm".into(),
                shape: vec![256],
                role: Role::Vector,
                group: "norms and biases",
            },
        ]
    }

    #[test]
    fn plans_count_every_tensor_in_its_placement() {
        let f32 = LoadPlan::new(&weights(), Quantization::None, DType::F32);
        assert_eq!(f32.resident, 4 * (256_000 + 65_536 + 256));
        assert_eq!(f32.peak, f32.resident + 8 * 256_000, "a block as large as the largest tensor, twice");
        let q8 = LoadPlan::new(&weights(), Quantization::Q8_0, DType::F32);
        assert_eq!(q8.resident, 2 * 256_000 + 65_536 / 32 * 34 + 4 * 256);
        let big =
            [PlannedWeight { name: "w".into(), shape: vec![8192, 8192], role: Role::Linear, group: "mlp" }];
        let plan = LoadPlan::new(&big, Quantization::Q4_0, DType::F32);
        assert_eq!(plan.peak - plan.resident, 8 * (4 << 20), "blocks stop at the merge's 16 MiB");
    }

    #[test]
    fn a_plan_over_budget_names_the_mode_that_fits() {
        let plan = LoadPlan::new(&weights(), Quantization::None, DType::F32);
        let alternatives = [
            Estimate { mode: "q8_0".into(), bytes: 600_000 },
            Estimate { mode: "q4_k".into(), bytes: 400_000 },
        ];
        let err = check("m", "f32", &plan, 500_000, &alternatives).unwrap_err();
        assert_eq!(err.to_string(), "m needs about 3.2 MiB in f32, more than the memory budget (488.3 KiB)");
        assert_eq!(err.help(), "load with quantization = \"q4_k\" (needs 390.6 KiB), or raise max-memory");
        assert!(check("m", "f32", &plan, plan.peak, &alternatives).is_ok());
    }
}
