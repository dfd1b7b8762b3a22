#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
# It installs what the tests need that cargo does not, then runs format, lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# ONNX Runtime's shared library comes from its PyPI wheel (the project loads it at run time,
# see src/runtime/ort_engine.rs); the `onnx` package is an independent checker of our graphs.
# Both go into a venv (target/test-venv; $PYTHON picks the interpreter), pinned with every
# transitive dependency by scripts/python/constraints.txt. ort 2.0.0-rc.15 needs ONNX Runtime
# 1.31 or newer.
echo "== python packages (target/test-venv)"
source scripts/python/venv.sh
venv="$PWD/target/test-venv"
make_venv "$venv" onnxruntime==1.32.0 onnx==1.23.2 onnx-ir==1.1.0
# The tests find ONNX Runtime and `python3 -c "import onnx"` through the venv.
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets -- -D warnings
echo "== tests"
cargo test --all-targets
cargo test --doc
echo "== compatibility (safetensors, transformers, gguf, onnxruntime-genai, llama.cpp; quantizers beside the peers')"
bash scripts/compat.sh
