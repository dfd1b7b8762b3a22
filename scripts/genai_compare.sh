#!/usr/bin/env bash
# Our int4 `ort` export beside onnxruntime-genai's own int4 model of the same weights, in one
# run: the builder's time and peak RSS beside `run`'s export stage, and both models' prefill and
# decode with the same prompt, steps and threads (`bench` for ours, scripts/genai_peer.py for
# theirs, in onnxruntime-genai's runtime). By hand, never in CI: the builder needs torch.
#
#   scripts/genai_compare.sh HF_FOLDER [THREADS]
#
# Writes under target/genai-compare/. The venv (target/genai-venv) gets torch, transformers,
# onnxruntime and onnxruntime-genai from PyPI on first use (about 3 GB).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
hf="$(cd "$1" && pwd)"
threads="${2:-2}"
work="$here/target/genai-compare"
venv="$here/target/genai-venv"
bin="$here/target/release/cargo-model-export"
mkdir -p "$work/project/src"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers==5.23.0 onnxruntime==1.32.0 onnxruntime-genai==0.18.0 onnx onnx-ir
fi
(cd "$here" && cargo build --release -q)

touch "$work/project/src/lib.rs"
cat > "$work/project/Cargo.toml" <<EOF
[package]
name = "genai-compare"
version = "0.1.0"
edition = "2021"

[package.metadata.model-export]
base = "$hf"
out-dir = "exports"

[package.metadata.model-export.validate]
engines = ["ort"]

[[package.metadata.model-export.export]]
name = "onnx-int4-ort"
format = "onnx"
dtype = "int4"
target = "ort"
EOF

echo "== onnxruntime-genai's builder (int4, cpu)"
rm -rf "$work/genai"
/usr/bin/time -f "builder: %e s wall, %M KiB peak RSS" \
    "$venv/bin/python" -m onnxruntime_genai.models.builder -i "$hf" -o "$work/genai" -p int4 -e cpu \
    -c "$work/genai-cache" > "$work/builder.log" 2>&1 || { tail -20 "$work/builder.log"; exit 1; }
tail -1 "$work/builder.log"

echo "== cargo model-export run (defaults, --no-validate: write + export-time check)"
(cd "$work/project" && "$bin" model-export run --no-validate --force | grep -E "^\| (stage|export:)")

echo "== onnxruntime-genai's model in its own runtime"
"$venv/bin/python" "$here/scripts/genai_peer.py" "$work/genai" 128 32 1 3 "$threads"

echo "== our export: bench (ONNX Runtime through the ort crate)"
(cd "$work/project" && "$bin" model-export bench --threads "$threads" | grep -E "^\|")
