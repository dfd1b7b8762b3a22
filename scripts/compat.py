"""Reads model-export's artifacts with the tools their users already use (scripts/compat.sh
runs this on the fixtures' exports):

- safetensors folders: the `safetensors` package reads every tensor with the expected name,
  dtype and shape, and transformers' AutoConfig turns config.json into its Qwen config class;
- GGUF files: the `gguf` package (llama.cpp's own reader) reads every tensor; names come out of
  gguf-py's HF -> GGUF name map, types follow llama.cpp's rules, every tensor dequantizes to the
  merged weights within its format's error, and q8_0/q4_0/q5_0 blocks are byte-identical to
  gguf-py's own quantizer on the same f32 weights;
- ONNX exports: onnxruntime-genai loads them with our genai_config.json and its greedy tokens
  equal transformers' golden greedy ids (which the validator reproduces).

Usage: compat.py OUT_DIR BASE_DIR [CASE]   (CASE: a fixture with golden greedy ids, for genai)
"""

import json
import sys
from pathlib import Path

import numpy as np

OUT, BASE = Path(sys.argv[1]), Path(sys.argv[2])
CASE = sys.argv[3] if len(sys.argv) > 3 else None
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def merged_weights():
    """The merged model in f32, from the hf-f32 export (the validator proved it against transformers)."""
    from safetensors import safe_open

    with safe_open(OUT / "hf-f32" / "model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def check_safetensors(weights):
    from safetensors import safe_open
    from transformers import AutoConfig

    expected = {}
    for shard in BASE.glob("*.safetensors"):
        with safe_open(shard, "np") as f:
            expected.update({k: f.get_slice(k).get_shape() for k in f.keys()})
    for name in ["hf-f32", "hf-f16"]:
        folder = OUT / name
        dtype = np.float32 if name == "hf-f32" else np.float16
        with safe_open(folder / "model.safetensors", "np") as f:
            names = set(f.keys())
            check(names == set(expected), f"{name}: tensors {sorted(names ^ set(expected))} differ from the base's")
            for k in names & set(expected):
                t = f.get_tensor(k)
                check(list(t.shape) == list(expected[k]), f"{name}: {k} has shape {t.shape}, base {expected[k]}")
                check(t.dtype == dtype, f"{name}: {k} is {t.dtype}, expected {dtype}")
        raw = json.loads((folder / "config.json").read_text())
        config = AutoConfig.from_pretrained(folder)
        wanted = {"qwen3": "Qwen3Config", "qwen2": "Qwen2Config", "qwen3_moe": "Qwen3MoeConfig"}[raw["model_type"]]
        check(type(config).__name__ == wanted, f"{name}: transformers reads {type(config).__name__}, not {wanted}")
        for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "rms_norm_eps", "tie_word_embeddings"]:
            check(getattr(config, key) == raw[key], f"{name}: config.{key} = {getattr(config, key)}, file {raw[key]}")
    print(f"  safetensors: hf-f32, hf-f16 read by safetensors and transformers ({len(expected)} tensors)")


def llama_cpp_type(file_type, name, cols, layers, tied, experts):
    """The ggml type llama.cpp gives a tensor (convert_hf_to_gguf.py / llama-quantize rules)."""
    from gguf import GGMLQuantizationType as T

    # convert_hf_to_gguf.py keeps the MoE router in f32, and llama-quantize leaves it so.
    if not name.endswith(".weight") or name.endswith("_norm.weight") or ".ffn_gate_inp." in name:
        return T.F32
    base = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_k": T.Q4_K, "q6_k": T.Q6_K}[file_type]
    block = {T.Q4_K: 256, T.Q5_K: 256, T.Q6_K: 256, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.Q4_0: 32}
    wanted = base
    if file_type in ("q4_0", "q4_k", "q6_k"):
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            wanted = T.Q8_0 if cols % block[base] else T.Q6_K
        elif experts == 8 and (".attn_k." in name or ".attn_v." in name):
            wanted = T.Q8_0  # llama-quantize's bump for 8-expert models
        elif experts == 8 and file_type == "q4_k" and ".attn_output." in name:
            wanted = T.Q5_K
        elif file_type == "q4_k" and (".attn_v." in name or ".ffn_down" in name):
            layer = int(name.split(".")[1])
            more = layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2
            wanted = T.Q6_K if more else T.Q4_K
    if wanted not in block or cols % block[wanted] == 0:
        return wanted
    fallback = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}.get(wanted, T.F16)
    return fallback if cols % block.get(fallback, 1) == 0 else T.F16


def stacked_experts(weights):
    """The merged weights as convert_hf_to_gguf.py hands them to gguf-py's name map: each
    projection of a MoE layer's experts stacked into one [experts, rows, cols] array under
    `model.layers.N.mlp.experts.<proj>.weight`."""
    import re

    pattern = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+_proj)\.weight")
    out, stacks = {}, {}
    for name, w in weights.items():
        m = pattern.fullmatch(name)
        if m is None:
            out[name] = w
        else:
            stacks.setdefault((int(m[1]), m[3]), {})[int(m[2])] = w
    for (layer, proj), experts in stacks.items():
        check(sorted(experts) == list(range(len(experts))), f"layer {layer} {proj}: experts {sorted(experts)}")
        out[f"model.layers.{layer}.mlp.experts.{proj}.weight"] = np.stack([experts[e] for e in sorted(experts)])
    return out


def field(reader, key):
    return reader.fields[key].contents()


def check_gguf(weights):
    import gguf
    from gguf import GGMLQuantizationType as T

    exports = sorted(p.parent for p in OUT.glob("gguf-*/model.gguf"))
    check(len(exports) > 0, "no GGUF exports to check")
    weights = stacked_experts(weights)
    for path in (p / "model.gguf" for p in exports):
        name = path.parent.name
        file_type = name.removeprefix("gguf-")
        reader = gguf.GGUFReader(path)
        arch = field(reader, "general.architecture")
        layers = field(reader, f"{arch}.block_count")
        experts = field(reader, f"{arch}.expert_count") if f"{arch}.expert_count" in reader.fields else 0
        model_arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
        names = gguf.get_tensor_name_map(model_arch, layers)
        tensors = {t.name: t for t in reader.tensors}
        tied = "output.weight" not in tensors
        check(tied == ("lm_head.weight" not in weights), f"{name}: tied embeddings differ from the merged model")
        tokens = field(reader, "tokenizer.ggml.tokens")
        check(len(tokens) == field(reader, f"{arch}.vocab_size"), f"{name}: {len(tokens)} tokens")
        check(field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "qwen2",
              f"{name}: tokenizer model/pre")
        check(len(tensors) == len(weights), f"{name}: {len(tensors)} tensors for {len(weights)} merged ones")
        worst = {}
        for hf_name, w in weights.items():
            stem, suffix = hf_name.rsplit(".", 1)
            gguf_name = names.get_name(stem)
            if gguf_name is None:
                check(False, f"{name}: gguf-py has no name for {hf_name}")
                continue
            gguf_name = f"{gguf_name}.{suffix}"
            t = tensors.get(gguf_name)
            if t is None:
                check(False, f"{name}: {gguf_name} (from {hf_name}) is missing")
                continue
            # gguf-py lists dimensions innermost first.
            check(list(reversed([int(d) for d in t.shape])) == list(w.shape), f"{name}: {gguf_name} shape {t.shape}")
            want = llama_cpp_type(file_type, gguf_name, w.shape[-1], layers, tied, experts)
            check(t.tensor_type == want, f"{name}: {gguf_name} is {t.tensor_type.name}, llama.cpp makes {want.name}")
            values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
            error = float(np.abs(values - w).max())
            scale = float(np.abs(w).max()) or 1.0
            bound = {T.F32: 0.0, T.F16: 2**-10, T.BF16: 2**-7, T.Q8_0: 1 / 127, T.Q6_K: 1 / 31, T.Q5_0: 1 / 15, T.Q5_1: 1 / 15,
                     T.Q4_K: 1 / 7, T.Q4_0: 1 / 7}[t.tensor_type]
            check(error <= bound * scale * 1.01 + 1e-7,
                  f"{name}: {gguf_name} dequantizes {error:.3g} away (bound {bound * scale:.3g})")
            worst[t.tensor_type.name] = max(worst.get(t.tensor_type.name, 0.0), error / scale)
            if t.tensor_type in (T.Q8_0, T.Q4_0, T.Q5_0):
                ours = np.asarray(t.data).tobytes()
                theirs = gguf.quants.quantize(w.astype(np.float32), t.tensor_type).tobytes()
                check(ours == theirs, f"{name}: {gguf_name} {t.tensor_type.name} blocks differ from gguf-py's quantizer")
        summary = ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items()))
        print(f"  gguf: {name} read by gguf-py, {len(tensors)} tensors, worst relative error {summary}")


def check_onnx_genai():
    import onnxruntime_genai as og
    from safetensors import safe_open

    reference = json.loads((FIXTURES / "reference" / f"{CASE}.json").read_text())
    with safe_open(FIXTURES / "reference" / f"{CASE}.safetensors", "np") as f:
        golden = f.get_tensor("greedy_ids")
        mask = f.get_tensor("attention_mask")
    for folder in sorted(p.parent for p in OUT.glob("onnx-*/genai_config.json")):
        model = og.Model(str(folder))
        tokenizer = og.Tokenizer(model)
        for row, prompt in enumerate(reference["prompts"]):
            ids = list(tokenizer.encode(prompt))
            prompt_ids = [int(t) for t, m in zip(golden[row][: mask.shape[1]], mask[row]) if m == 1]
            check(ids == prompt_ids, f"{folder.name}: genai tokenizes prompt {row} as {ids}")
            new = golden[row][mask.shape[1]:].tolist()
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + len(new), do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(ids)
            out = []
            while not generator.is_done():
                generator.generate_next_token()
                out.append(int(generator.get_next_tokens()[0]))
            check(out == new[: len(out)] and len(out) > 0, f"{folder.name}: genai greedy {out} != {new}")
        print(f"  onnxruntime-genai: {folder.name} generates transformers' greedy tokens for {len(reference['prompts'])} prompts")


weights = merged_weights()
check_safetensors(weights)
check_gguf(weights)
if CASE:
    check_onnx_genai()
if failures:
    print(f"{BASE.name}: {len(failures)} compatibility failures:")
    for f in failures:
        print("  -", f)
    sys.exit(1)
print(f"{BASE.name}: every artifact opens in its consumer")
