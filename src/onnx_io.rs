//! The ONNX contract the exporter writes and the engines run: file names, input and output
//! names (those of optimum and onnxruntime-genai), and the ONNX Runtime release it is proven on.
//! Both `export::onnx` and `runtime` import it, so neither imports the other for a name.

/// The graph file inside an ONNX export folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Its external-data file, when the weights live outside the graph.
pub const DATA_FILE: &str = "model.onnx_data";

pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";
pub const LOGITS: &str = "logits";

/// Per-layer KV cache names; `%d` is the layer ([`io_name`]).
pub const PAST_KEY: &str = "past_key_values.%d.key";
pub const PAST_VALUE: &str = "past_key_values.%d.value";
pub const PRESENT_KEY: &str = "present.%d.key";
pub const PRESENT_VALUE: &str = "present.%d.value";

pub fn io_name(pattern: &str, layer: usize) -> String {
    pattern.replace("%d", &layer.to_string())
}

/// The onnxruntime wheel scripts/test.sh installs, whose shared library `ort` loads.
pub const ORT_WHEEL: &str = "onnxruntime==1.32.0";
