//! The tensors a profile expects for a given config.json, with their shapes, and the check that
//! a model folder holds exactly those.

use super::config_json::HfConfig;
use super::folder::ModelFolder;
use crate::error::ModelError;

/// Expected tensor names and shapes for `config` under its profile, in the order a synthesized
/// model stores them: embedding, final norm, head (when not tied), then every layer's tensors.
pub fn expected_tensors(config: &HfConfig) -> Vec<(String, Vec<usize>)> {
    let d = &config.decoder;
    let mut out = vec![d.embedding.clone(), d.final_norm.weight.clone()];
    if !d.tied {
        out.push(d.head.clone());
    }
    out.extend(d.layer_tensors().iter().cloned());
    out.into_iter().map(|t| (t.name, t.shape)).collect()
}

/// Everything about the folder's tensors that disagrees with its profile, one line each.
pub fn layout_problems(folder: &ModelFolder) -> Vec<(String, String)> {
    let expected = expected_tensors(&folder.config);
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match folder.tensor(name) {
            None => problems.push((name.clone(), "missing".to_string())),
            Some((_, info)) if &info.shape != shape => problems
                .push((name.clone(), format!("shape {:?}, config.json implies {:?}", info.shape, shape))),
            Some(_) => {}
        }
    }
    let lm_head = folder.config.decoder.head.name.as_str();
    for (_, info) in folder.tensors() {
        // A tied model may still store its head (some exporters do); it must then match.
        let tied_head = folder.config.tie_word_embeddings && info.name == lm_head;
        if tied_head {
            let want = vec![folder.config.vocab_size, folder.config.hidden_size];
            if info.shape != want {
                problems.push((
                    info.name.clone(),
                    format!("shape {:?}, config.json implies {:?}", info.shape, want),
                ));
            }
        } else if !expected.iter().any(|(n, _)| n == &info.name) {
            problems.push((info.name.clone(), "not part of the architecture".to_string()));
        }
    }
    problems
}

/// Fails on the first layout problem, naming the tensor.
pub fn check_layout(folder: &ModelFolder) -> Result<(), ModelError> {
    match layout_problems(folder).into_iter().next() {
        None => Ok(()),
        Some((tensor, message)) => Err(ModelError::Layout {
            path: folder.file_of(&tensor).unwrap_or(&folder.dir).to_path_buf(),
            profile: folder.profile.name,
            tensor,
            message,
        }),
    }
}
