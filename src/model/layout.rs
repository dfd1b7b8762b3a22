//! The tensors a profile expects for a given config.json, with their shapes, and the check that
//! a model folder holds exactly those.

use super::config_json::HfConfig;
use super::folder::ModelFolder;
use crate::error::ModelError;
use crate::profile::{LayerTensor, Profile};

/// Expected tensor names and shapes for `config` under `profile`.
pub fn expected_tensors(config: &HfConfig, profile: &Profile) -> Vec<(String, Vec<usize>)> {
    let hidden = config.hidden_size;
    let q_out = config.num_attention_heads * config.head_dim;
    let kv_out = config.num_key_value_heads * config.head_dim;
    let inter = config.intermediate_size;
    let mut out = vec![
        (profile.tensors.embed.to_string(), vec![config.vocab_size, hidden]),
        (profile.tensors.final_norm.to_string(), vec![hidden]),
    ];
    if !config.tie_word_embeddings {
        out.push((profile.tensors.lm_head.to_string(), vec![config.vocab_size, hidden]));
    }
    for layer in 0..config.num_hidden_layers {
        for (role, _) in profile.tensors.layer {
            let shape = match role {
                LayerTensor::InputNorm | LayerTensor::PostAttentionNorm => vec![hidden],
                LayerTensor::QProj => vec![q_out, hidden],
                LayerTensor::KProj | LayerTensor::VProj => vec![kv_out, hidden],
                LayerTensor::OProj => vec![hidden, q_out],
                LayerTensor::QNorm | LayerTensor::KNorm => vec![config.head_dim],
                LayerTensor::QBias => vec![q_out],
                LayerTensor::KBias | LayerTensor::VBias => vec![kv_out],
                LayerTensor::GateProj | LayerTensor::UpProj => vec![inter, hidden],
                LayerTensor::DownProj => vec![hidden, inter],
            };
            if let Some(name) = profile.layer_tensor(layer, *role) {
                out.push((name, shape));
            }
        }
    }
    out
}

/// Everything about the folder's tensors that disagrees with its profile, one line each.
pub fn layout_problems(folder: &ModelFolder) -> Vec<(String, String)> {
    let expected = expected_tensors(&folder.config, folder.profile);
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match folder.tensor(name) {
            None => problems.push((name.clone(), "missing".to_string())),
            Some((_, info)) if &info.shape != shape => problems
                .push((name.clone(), format!("shape {:?}, config.json implies {:?}", info.shape, shape))),
            Some(_) => {}
        }
    }
    let lm_head = folder.profile.tensors.lm_head;
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
