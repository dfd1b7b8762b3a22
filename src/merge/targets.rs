//! Checks that an adapter's `target_modules` and its tensors agree with each other and with the
//! base model, so a merge never silently drops a trained module or invents one.

use crate::checkpoint::Adapter;
use crate::checkpoint::adapter_config::TargetModules;
use crate::error::CheckpointError;
use crate::model::ModelFolder;

/// Base modules PEFT can adapt: every matrix weight (projections, embedding, head).
fn adaptable_modules(base: &ModelFolder) -> Vec<String> {
    let mut modules: Vec<String> = base
        .tensors()
        .filter(|(_, t)| t.shape.len() == 2)
        .filter_map(|(_, t)| t.name.strip_suffix(".weight").map(str::to_string))
        .collect();
    let head = base.config.decoder.head.name.trim_end_matches(".weight");
    if base.config.tie_word_embeddings && !modules.iter().any(|m| m == head) {
        modules.push(head.to_string());
    }
    modules
}

pub fn check_targets(base: &ModelFolder, adapter: &Adapter) -> Result<(), CheckpointError> {
    let config = &adapter.config;
    let decoder = &*base.config.decoder;
    let candidates = adaptable_modules(base);
    let config_error =
        |message: String| CheckpointError::AdapterConfig { path: config.path.clone(), message };

    if let TargetModules::List(targets) = &config.target_modules {
        for target in targets {
            let single = TargetModules::List(vec![target.clone()]);
            if !candidates.iter().any(|m| single.matches(m, decoder)) {
                return Err(config_error(format!(
                    "target module `{target}` matches no module of the base model ({}): was the adapter trained for another architecture?",
                    base.dir.display()
                )));
            }
        }
    }
    let selected: Vec<&String> = candidates.iter().filter(|m| config.selects(m, decoder)).collect();
    if selected.is_empty() {
        return Err(config_error(format!(
            "`target_modules` ({}) selects no module of the base model ({})",
            config.target_modules.describe(),
            base.dir.display()
        )));
    }
    for (module, tensors) in &adapter.modules {
        if !selected.contains(&module) {
            let tensor = tensors.lora_a.as_deref().or(tensors.embedding_a.as_deref()).unwrap_or(module);
            return Err(CheckpointError::AdapterTensor {
                path: adapter.file.path().to_path_buf(),
                tensor: tensor.to_string(),
                message: format!(
                    "adapts `{module}`, which adapter_config.json's target_modules does not select"
                ),
            });
        }
    }
    for module in selected {
        if !adapter.modules.contains_key(module) {
            let embedding = module == decoder.embedding.name.trim_end_matches(".weight");
            let suffix = if embedding { "lora_embedding_A" } else { "lora_A.weight" };
            return Err(CheckpointError::AdapterTensor {
                path: adapter.file.path().to_path_buf(),
                tensor: format!("base_model.model.{module}.{suffix}"),
                message: format!(
                    "missing: target_modules selects `{module}` but the file has no LoRA tensors for it (an incomplete save?)"
                ),
            });
        }
    }
    Ok(())
}
