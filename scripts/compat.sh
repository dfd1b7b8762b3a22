#!/usr/bin/env bash
# Compatibility checks: every artifact opens in the tool its users already use. Exports of the
# fixtures (and of a synthetic model wide enough for llama.cpp's k-quant blocks) are read by
# the `safetensors` package and transformers' config classes, by the `gguf` package llama.cpp
# publishes, and run in onnxruntime-genai; scripts/compat.py holds the checks.
# Run by scripts/test.sh. Its Python packages go into a venv (target/compat-venv, pinned with
# their dependencies by scripts/python/constraints.txt); where they cannot be installed the
# checks are skipped, except under CI=true, where that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${COMPAT_VENV:-target/compat-venv}"
packages=(gguf==0.19.0 safetensors==0.8.0 transformers==5.23.0 onnxruntime-genai==0.18.0)
source scripts/python/venv.sh
if ! make_venv "$venv" "${packages[@]}"; then
    if [ "${CI:-}" = "true" ]; then
        echo "compat: cannot install ${packages[*]} (CI=true requires the checks)" >&2
        exit 1
    fi
    echo "compat: skipped: cannot install ${packages[*]} into $venv"
    exit 0
fi

cargo build --quiet --bin cargo-model-export --example synth
bin="$PWD/target/debug/cargo-model-export"
fixtures="$PWD/tests/fixtures"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# project DIR BASE ADAPTER EXPORT... : a cargo project whose exports are `name:format:dtype`.
project() {
    local dir="$1" base="$2" adapter="$3"
    shift 3
    mkdir -p "$dir/src"
    : > "$dir/src/lib.rs"
    {
        printf '[package]\nname = "compat"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n'
        printf '[package.metadata.model-export]\nbase = "%s"\nadapter = "%s"\nout-dir = "out"\n' "$base" "$adapter"
        for export in "$@"; do
            IFS=: read -r name format dtype <<< "$export"
            printf '\n[[package.metadata.model-export.export]]\nname = "%s"\nformat = "%s"\ndtype = "%s"\n' \
                "$name" "$format" "$dtype"
        done
    } > "$dir/Cargo.toml"
    # Validation has its own tests; here only the consumers judge.
    (cd "$dir" && "$bin" run --quiet --no-validate > /dev/null)
}

gguf_all=(gguf-f32:gguf:f32 gguf-f16:gguf:f16 gguf-bf16:gguf:bf16 gguf-q8_0:gguf:q8_0 gguf-q4_0:gguf:q4_0
    gguf-q4_k:gguf:q4_k gguf-q6_k:gguf:q6_k)
for case in qwen3-tiny:qwen3-tiny-run qwen2-tiny:qwen2-tiny-adapter; do
    IFS=: read -r base adapter <<< "$case"
    echo "compat: $base"
    project "$work/$base" "$fixtures/$base" "$fixtures/$adapter" \
        hf-f32:safetensors:f32 hf-f16:safetensors:f16 onnx-f32:onnx:f32 "${gguf_all[@]}"
    "$venv/bin/python" scripts/compat.py "$work/$base/out" "$fixtures/$base" "$base"
done

echo "compat: qwen3-small (synthetic, 256-wide rows: real q4_k/q6_k blocks, padded vocabulary)"
cargo run --quiet --example synth -- qwen3-small "$work/small-base" --run "$work/small-run" > /dev/null
project "$work/small" "$work/small-base" "$work/small-run" \
    hf-f32:safetensors:f32 hf-f16:safetensors:f16 "${gguf_all[@]}"
"$venv/bin/python" scripts/compat.py "$work/small/out" "$work/small-base"
