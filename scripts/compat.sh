#!/usr/bin/env bash
# Compatibility checks: every artifact opens in the tool its users already use. Exports of the
# fixtures (and of a synthetic model wide enough for llama.cpp's k-quant blocks) are read by
# the `safetensors` package and transformers' config classes, by the `gguf` package llama.cpp
# publishes, and run in onnxruntime-genai (scripts/compat.py), and every GGUF type runs in
# llama.cpp itself (scripts/compat_llama.py). On the trained fixture, our quantizers are measured
# beside llama.cpp's and ONNX Runtime's own (scripts/quant_peers.py).
# Run by scripts/test.sh. Its Python packages go into a venv (target/compat-venv, pinned with
# their dependencies by scripts/python/constraints.txt); where they cannot be installed the
# checks are skipped, except under CI=true, where that fails. llama.cpp comes as the sdist of
# llama-cpp-python, which builds the llama.cpp it vendors: cmake comes from PyPI, a C++ compiler
# from the system (Debian/Ubuntu: apt-get install g++); about 8 minutes on 2 cores the first time,
# then seconds (pip keeps the built wheel in its cache).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${COMPAT_VENV:-target/compat-venv}"
packages=(gguf==0.19.0 safetensors==0.8.0 transformers==5.23.0 onnxruntime-genai==0.18.0
    onnxruntime==1.32.0 onnx==1.23.2 onnx-ir==1.1.0)
source scripts/python/venv.sh
if ! make_venv "$venv" "${packages[@]}"; then
    if [ "${CI:-}" = "true" ]; then
        echo "compat: cannot install ${packages[*]} (CI=true requires the checks)" >&2
        exit 1
    fi
    echo "compat: skipped: cannot install ${packages[*]} into $venv"
    exit 0
fi
llama=true
if ! "$venv/bin/python" -c "import llama_cpp" 2> /dev/null; then
    echo "compat: building llama.cpp (llama-cpp-python==0.3.36 from its sdist; ~8 min the first time)"
    if ! make_venv "$venv" llama-cpp-python==0.3.36; then
        if [ "${CI:-}" = "true" ]; then
            echo "compat: llama-cpp-python did not build (CI=true requires llama.cpp): it needs a C++ compiler (apt-get install g++)" >&2
            exit 1
        fi
        echo "compat: llama.cpp checks skipped: llama-cpp-python did not build (it needs a C++ compiler)"
        llama=false
    fi
fi

cargo build --quiet --bin cargo-model-export --example synth
bin="$PWD/target/debug/cargo-model-export"
fixtures="$PWD/tests/fixtures"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# project DIR BASE ADAPTER EXPORT... : a cargo project whose exports are `name:format:dtype[:target]`
# (ADAPTER `-`: the base alone).
project() {
    local dir="$1" base="$2" adapter="$3"
    shift 3
    mkdir -p "$dir/src"
    : > "$dir/src/lib.rs"
    {
        printf '[package]\nname = "compat"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n'
        printf '[package.metadata.model-export]\nbase = "%s"\nout-dir = "out"\n' "$base"
        if [ "$adapter" != "-" ]; then printf 'adapter = "%s"\n' "$adapter"; fi
        for export in "$@"; do
            IFS=: read -r name format dtype target <<< "$export"
            printf '\n[[package.metadata.model-export.export]]\nname = "%s"\nformat = "%s"\ndtype = "%s"\n' \
                "$name" "$format" "$dtype"
            if [ -n "$target" ]; then printf 'target = "%s"\n' "$target"; fi
        done
    } > "$dir/Cargo.toml"
    # Validation has its own tests; here only the consumers judge.
    (cd "$dir" && "$bin" run --quiet --no-validate > /dev/null)
}

# validated DIR BASE ADAPTER PROMPTS_JSON : the GGUF exports validated in candle against our
# reference of these prompts (12 greedy tokens), which the run caches in out/.state/reference.bin;
# each export's validation.json holds candle's figures. Exit 1 (an export off its tolerance, as
# 4-bit types of random weights are) is the tests' business, not the consumers'.
validated() {
    local dir="$1" prompts="$4" status=0
    project "$dir" "$2" "$3" "${gguf_all[@]}"
    (cd "$dir" && MODEL_EXPORT_VALIDATE_PROMPTS="$prompts" MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS=12 \
        MODEL_EXPORT_VALIDATE_ENGINES=candle "$bin" run --quiet > /dev/null 2>&1) || status=$?
    if [ "$status" -gt 1 ] || [ ! -f "$dir/out/.state/reference.bin" ]; then
        echo "compat: the validated run in $dir failed ($status)" >&2
        exit 1
    fi
}

gguf_all=(gguf-f32:gguf:f32 gguf-f16:gguf:f16 gguf-bf16:gguf:bf16 gguf-q8_0:gguf:q8_0 gguf-q4_0:gguf:q4_0
    gguf-q4_k:gguf:q4_k gguf-q6_k:gguf:q6_k)
for case in qwen3-tiny:qwen3-tiny-run qwen2-tiny:qwen2-tiny-adapter qwen3-moe-tiny:qwen3-moe-tiny-adapter; do
    IFS=: read -r base adapter <<< "$case"
    echo "compat: $base"
    project "$work/$base" "$fixtures/$base" "$fixtures/$adapter" \
        hf-f32:safetensors:f32 hf-f16:safetensors:f16 onnx-f32:onnx:f32 "${gguf_all[@]}"
    "$venv/bin/python" scripts/compat.py "$work/$base/out" "$fixtures/$base" "$base"
    if $llama; then
        prompts="$("$venv/bin/python" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["prompts"]))' \
            "$fixtures/reference/$base.json")"
        validated "$work/$base-llama" "$fixtures/$base" "$fixtures/$adapter" "$prompts"
        "$venv/bin/python" scripts/compat_llama.py "$work/$base-llama/out" "$fixtures/$base" "$prompts" "$base"
    fi
done

echo "compat: qwen3-small (synthetic, 256-wide rows: real q4_k/q6_k blocks, padded vocabulary)"
cargo run --quiet --example synth -- qwen3-small "$work/small-base" --run "$work/small-run" > /dev/null
project "$work/small" "$work/small-base" "$work/small-run" \
    hf-f32:safetensors:f32 hf-f16:safetensors:f16 "${gguf_all[@]}"
"$venv/bin/python" scripts/compat.py "$work/small/out" "$work/small-base"
if $llama; then
    prompts='["Hello", "用一句话解释LoRA"]'
    validated "$work/small-llama" "$work/small-base" "$work/small-run" "$prompts"
    "$venv/bin/python" scripts/compat_llama.py "$work/small-llama/out" "$work/small-base" "$prompts"
    # bench measures llama.cpp on the same file beside our engine (scripts/llama_peer.py).
    case $venv in /*) peer_python="$venv/bin/python" ;; *) peer_python="$PWD/$venv/bin/python" ;; esac
    (cd "$work/small-llama" && LLAMA_CPP_PYTHON="$peer_python" "$bin" bench --export gguf-q4_k \
        --prompt-tokens 8 --decode-tokens 4 --warmup 0 --repetitions 1 --message-format json) > "$work/bench.json"
    "$venv/bin/python" -c '
import json, sys
row = json.load(open(sys.argv[1]))[0]
peer = row["llama_cpp"]
assert peer and peer["decode_ms_per_token"]["median"] > 0, row
engine, ours, theirs = peer["engine"], row["decode_ms_per_token"]["median"], peer["decode_ms_per_token"]["median"]
print(f"compat: bench beside {engine}: ours {ours:.2f} ms/token, llama.cpp {theirs:.2f}")
' "$work/bench.json"
fi

if $llama; then
    echo "compat: qwen3-code (trained): our quantizers beside llama.cpp's and ONNX Runtime's own"
    code_exports=(gguf-f32:gguf:f32 gguf-f16:gguf:f16 gguf-q8_0:gguf:q8_0 gguf-q4_0:gguf:q4_0 gguf-q4_k:gguf:q4_k
        gguf-q6_k:gguf:q6_k onnx-f32:onnx:f32 onnx-int4:onnx:int4 onnx-int4-ort:onnx:int4:ort onnx-int8:onnx:int8)
    # The merged model on held-out Rust, and the base alone on held-out Python: two trained models.
    project "$work/code" "$fixtures/qwen3-code-base" "$fixtures/qwen3-code-rust-run" "${code_exports[@]}"
    project "$work/code-base" "$fixtures/qwen3-code-base" - "${code_exports[@]}"
    for case in code:rust code-base:python; do
        IFS=: read -r dir text <<< "$case"
        # The peers' quantizers talk on stderr (llama.cpp's per-tensor fallbacks, ORT's progress).
        if ! "$venv/bin/python" scripts/quant_peers.py "$work/$dir/out" "$text" 2> "$work/peers.log"; then
            cat "$work/peers.log" >&2
            exit 1
        fi
    done
fi
