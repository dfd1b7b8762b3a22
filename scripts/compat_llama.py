"""llama.cpp itself on every GGUF export (scripts/compat.sh runs this; `llama_cpp` is
llama-cpp-python, which builds the llama.cpp it vendors). For each gguf-* export in OUT_DIR:

- llama.cpp loads the file;
- it tokenizes the validation prompts (and Chinese, a chat-rendered prompt and code with special
  tokens; `special=True`, no added bos) to the ids the `tokenizers` package gives, and the
  prompts to the ids our reference ran;
- its logits of the prompts (`logits_all`) are compared with our candle reference's (the
  `.state/reference.bin` the validated run of OUT_DIR cached): f32 and f16/bf16 within the
  validator's f32/f16 tolerances; quantized types by cosine and mean KL divergence, bounded per
  type by what our candle engine measured on the same file against the same reference (the
  export's validation.json): llama.cpp must compute our blocks as we do;
- each quantized type's blocks are byte-identical to what llama.cpp's own quantizer
  (`llama_model_quantize` to Q8_0 / Q4_0 / Q4_K_M / Q6_K, no importance matrix) makes of our f32
  file, and its KL is at most 1.05x that of the same quantizer run on our f16 file;
- f32 greedy-generates transformers' golden ids (the reference's, for a model without golden data),
  and so does f16 on the fixtures;
- the chat template in the file renders, in llama.cpp's own template engine
  (`llama_chat_apply_template`) and in llama-cpp-python's Jinja formatter, to the prompt text
  transformers' `apply_chat_template` gives.

Usage: compat_llama.py OUT_DIR BASE_DIR PROMPTS_JSON [CASE]
  PROMPTS_JSON: the validation prompts the run's reference was made of; CASE: a fixture with golden ids
"""

import contextlib
import ctypes
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

OUT, BASE = Path(sys.argv[1]), Path(sys.argv[2])
REFERENCE = OUT / ".state" / "reference.bin"
PROMPTS = json.loads(sys.argv[3])
CASE = sys.argv[4] if len(sys.argv) > 4 else None
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
failures = []

# f32 and f16/bf16: the validator's own tolerances, (largest max|Δ| / max(1, RMS of the reference
# logits) or None, smallest cosine, largest mean KL in nats). llama.cpp runs with an f32 KV cache:
# its default f16 cache alone moves f32 logits by 1e-3.
FLOAT_BOUNDS = {
    "f32": (1e-4, 0.999999, 1e-6),
    "f16": (1e-1, 0.9999, 1e-3),
    "bf16": (None, 0.999, 1e-2),
}
# Quantized types: llama.cpp's KL and cosine deficit may exceed candle's on the same file by this
# factor plus a floor. Both round activations to 8 bits for quantized dot products, so the two
# agree closely; a wrong block layout gives noise. Random weights make every 4-bit type poor
# (candle's own figures say how poor), so fixed bars would test the weights, not llama.cpp.
RATIO, FLOOR = 1.25, 1e-5


# generation_config.json's eos ids of every fixture.
EOS_IDS = (383, 381)


def check(ok, message):
    if not ok:
        failures.append(message)


def read_reference(path):
    """The candle reference cached by `run`: u64 header length, JSON header, f32 logits."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    logits = np.frombuffer(data[8 + length : 8 + length + 4 * header["logits"]], dtype="<f4")
    logits = logits.reshape(len(header["input_ids"]), -1, header["vocab"])
    rows = []
    for b, (ids, mask) in enumerate(zip(header["input_ids"], header["attention_mask"])):
        valid = [i for i, m in enumerate(mask) if m == 1]
        new = header["greedy"][b][len(ids) :]
        rows.append(([ids[i] for i in valid], logits[b, valid].astype(np.float64), new))
    return rows


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ours, reference):
    """(max|Δ| / max(1, RMS), mean cosine, mean KL(reference || ours)) over positions, as the
    validator computes them."""
    rms = float(np.sqrt((reference**2).mean()))
    relative = float(np.abs(ours - reference).max()) / max(1.0, rms)
    cosine = float(np.mean((ours * reference).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1))))
    lp, lq = log_softmax(reference), log_softmax(ours)
    kl = float(np.mean((np.exp(lp) * (lp - lq)).sum(-1)))
    return relative, cosine, kl


def golden_greedy():
    """transformers' prompts (unpadded ids) and greedy new tokens, if CASE has golden data."""
    if not CASE:
        return None
    from safetensors import safe_open

    with safe_open(FIXTURES / "reference" / f"{CASE}.safetensors", "np") as f:
        ids, mask = f.get_tensor("input_ids"), f.get_tensor("attention_mask")
        greedy = f.get_tensor("greedy_ids")
    width = ids.shape[1]
    rows = []
    for b, (row, mrow) in enumerate(zip(ids, mask)):
        new = greedy[b, width:].tolist()
        # transformers carries a row that produced an eos id on with pad: compare up to the eos.
        stop = next((i for i, t in enumerate(new) if t in EOS_IDS), None)
        rows.append(([int(t) for t, m in zip(row, mrow) if m == 1], new if stop is None else new[: stop + 1]))
    return rows


def llama_greedy(model, prompt, count):
    """Greedy tokens from llama.cpp's logits, decoding with its KV cache."""
    model.reset()
    model.eval(prompt)
    out = []
    for _ in range(count):
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
        out.append(token)
        model.eval([token])
    return out


def check_chat_template(model, name):
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    template = llama_cpp.llama_model_chat_template(model.model, None)
    check(template is not None, f"{name}: llama.cpp finds no chat template in the file")
    if template is None:
        return
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is LoRA?"}]
    expected = AutoTokenizer.from_pretrained(BASE).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # llama.cpp's own renderer of the template it read from the file.
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages]
    )
    size = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, None, 0)
    check(size > 0, f"{name}: llama.cpp cannot apply the file's chat template ({size})")
    if size > 0:
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buffer, size + 1)
        rendered = buffer.raw[:size].decode()
        check(rendered == expected, f"{name}: llama.cpp renders {rendered!r}, transformers {expected!r}")
    # llama-cpp-python's chat API runs the template itself, in Jinja.
    jinja = Jinja2ChatFormatter(template.decode(), eos_token="", bos_token="")(messages=messages).prompt
    check(jinja == expected, f"{name}: llama-cpp-python's Jinja renders {jinja!r}, transformers {expected!r}")


# llama.cpp's file types for ours, and how much worse than theirs ours may be (issue: 1.05x).
PEER_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K_M", "q6_k": "Q6_K"}
PEER_RATIO = 1.05


def figures(model, reference):
    """(relative, cosine, mean KL) of a loaded model's logits of the reference prompts."""
    ours, theirs = [], []
    for ids, logits, _ in reference:
        model.reset()
        model.eval(ids)
        ours.append(np.array(model.scores[: len(ids)], dtype=np.float64))
        theirs.append(logits)
    return compare(np.concatenate(ours), np.concatenate(theirs))


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp's quantizer reports every fallback on the process's stderr: silence it."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def llama_quantize(source, file_type, target):
    """llama.cpp's own quantizer (`llama_model_quantize`) run on `source` to `file_type`'s type."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{PEER_TYPES[file_type]}")
    params.nthread = 2
    with quiet_stderr():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    check(status == 0, f"llama_model_quantize to {PEER_TYPES[file_type]} returned {status}")


def peer_figures(f16_file, file_type, reference, context):
    """The figures of llama.cpp's own quantization of `f16_file` to `file_type`'s llama.cpp type."""
    import tempfile

    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as work:
        target = Path(work) / "peer.gguf"
        llama_quantize(f16_file, file_type, target)
        model = Llama(model_path=str(target), n_ctx=context, n_batch=context, logits_all=True, n_threads=2,
                      verbose=False, type_k=0, type_v=0)
        result = figures(model, reference)
        model.close()
    return result


def same_blocks(ours_file, f32_file, file_type):
    """How many of our quantized tensors are byte for byte what llama.cpp's own quantizer makes of
    our f32 file, and the names of those that are not."""
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as work:
        target = Path(work) / "peer.gguf"
        llama_quantize(f32_file, file_type, target)
        theirs = {t.name: t for t in gguf.GGUFReader(target).tensors}
        same, different = 0, []
        for t in gguf.GGUFReader(ours_file).tensors:
            if t.tensor_type.name in ("F32", "F16", "BF16"):
                continue
            peer = theirs.get(t.name)
            if peer is not None and peer.tensor_type == t.tensor_type and np.asarray(peer.data).tobytes() == np.asarray(t.data).tobytes():
                same += 1
            else:
                different.append(t.name)
    return same, different


def candle_figures(folder):
    """(cosine, mean KL) our candle engine measured for this export against the same reference."""
    report = json.loads((folder / "validation.json").read_text())
    logits = report["exports"][0]["engines"][0]["logits"]
    return logits["cosine"], logits["mean_kl"]


def quantized_bounds(folder, file_type, kl, reference, context):
    """(smallest cosine, largest mean KL, what they come from) for a quantized file: candle's
    figures on the same file; and, checked here, llama.cpp's own quantizer: its blocks of our f32
    file byte for byte, its KL on our f16 file at most 1/1.05 of ours."""
    candle_cosine, candle_kl = candle_figures(folder)
    bounds = f"candle on the same file: cosine {candle_cosine:.6f}, mean KL {candle_kl:.2e}"
    peer = PEER_TYPES[file_type]
    peer_kl = peer_figures(OUT / "gguf-f16" / "model.gguf", file_type, reference, context)[2]
    bounds += f"; llama.cpp's own {peer} of our f16 file: mean KL {peer_kl:.2e}"
    check(kl <= PEER_RATIO * peer_kl + FLOOR,
          f"{folder.name}: mean KL {kl:.2e} > {PEER_RATIO} x llama.cpp's own {peer} ({peer_kl:.2e})")
    same, different = same_blocks(folder / "model.gguf", OUT / "gguf-f32" / "model.gguf", file_type)
    check(not different, f"{folder.name}: {different} differ from llama.cpp's own {peer} of our f32 file")
    bounds += f"; {same} quantized tensors byte-identical to its {peer} of our f32 file"
    return 1 - RATIO * (1 - candle_cosine) - FLOOR, RATIO * candle_kl + FLOOR, bounds


def main():
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    reference = read_reference(REFERENCE)
    golden = golden_greedy()
    hf_tokenizer = Tokenizer.from_file(str(BASE / "tokenizer.json"))
    texts = PROMPTS + [
        "用一句话解释LoRA",
        "<|im_start|>user\nWhat does a tiny model learn?<|im_end|>\n<|im_start|>assistant\n",
        "fn main() {\n    println!(\"{}\", 1 + 1);\n}<|endoftext|>",
    ]
    exports = sorted(p.parent for p in OUT.glob("gguf-*/model.gguf"))
    check(len(exports) > 0, "no GGUF exports to check")
    for folder in exports:
        name, file_type = folder.name, folder.name.removeprefix("gguf-")
        context = max(len(ids) + len(new) for ids, _, new in reference) + 8
        model = Llama(model_path=str(folder / "model.gguf"), n_ctx=context, n_batch=context, logits_all=True,
                      n_threads=2, verbose=False, type_k=0, type_v=0)
        for text in texts:
            ours = model.tokenize(text.encode(), add_bos=False, special=True)
            theirs = hf_tokenizer.encode(text, add_special_tokens=False).ids
            check(ours == theirs, f"{name}: llama.cpp tokenizes {text!r} as {ours}, tokenizers as {theirs}")
        for prompt, (ids, _, _) in zip(PROMPTS, reference, strict=True):
            ours = model.tokenize(prompt.encode(), add_bos=False, special=True)
            check(ours == ids, f"{name}: llama.cpp tokenizes {prompt!r} as {ours}, our reference ran {ids}")
        relative, cosine, kl = figures(model, reference)
        # A MoE routes each token to its top-k experts, and bf16 rounding of the activations
        # that reach the router flips near ties (candle on the same file measures the same
        # cosine): there bf16 is bounded like a quantized type, by candle's figures.
        moe = any(key.endswith(".expert_count") for key in model.metadata)
        if file_type == "bf16" and moe:
            candle_cosine, candle_kl = candle_figures(folder)
            max_relative, min_cosine, max_kl = None, 1 - RATIO * (1 - candle_cosine) - FLOOR, RATIO * candle_kl + FLOOR
            bounds = f"MoE: candle on the same file: cosine {candle_cosine:.6f}, mean KL {candle_kl:.2e}"
        elif file_type in FLOAT_BOUNDS:
            max_relative, min_cosine, max_kl = FLOAT_BOUNDS[file_type]
            bounds = f"bounds {max_relative}, {min_cosine}, {max_kl:.0e}"
        else:
            max_relative = None
            min_cosine, max_kl, bounds = quantized_bounds(folder, file_type, kl, reference, context)
        if max_relative is not None:
            check(relative <= max_relative, f"{name}: logits {relative:.2e} (relative) from the reference > {max_relative}")
        check(cosine >= min_cosine, f"{name}: cosine {cosine:.6f} < {min_cosine:.6f} ({bounds})")
        check(kl <= max_kl, f"{name}: mean KL {kl:.2e} > {max_kl:.2e} ({bounds})")
        greedy = ""
        # f32: transformers' golden ids where the fixture has them, else the reference's; f16 on
        # the fixtures too (it keeps transformers' greedy path on all three).
        if file_type == "f32" or (file_type == "f16" and golden):
            cases = golden or [(ids, new) for ids, _, new in reference]
            for row, (ids, new) in enumerate(cases):
                out = llama_greedy(model, ids, len(new))
                check(out == new, f"{name}: llama.cpp greedy {out} != {'transformers' if golden else 'reference'} {new}")
            greedy = f"; greedy = {'transformers golden' if golden else 'reference'} ids ({len(cases)} prompts)"
        check_chat_template(model, name)
        print(f"  llama.cpp: {name} loads, tokenizes as tokenizers, logits vs reference: relative {relative:.2e}, "
              f"cosine {cosine:.6f}, mean KL {kl:.2e} ({bounds}){greedy}; chat template renders as transformers'")
        model.close()


main()
if failures:
    print(f"{BASE.name}: {len(failures)} llama.cpp failures:")
    for f in failures:
        print("  -", f)
    sys.exit(1)
print(f"{BASE.name}: llama.cpp runs every GGUF export")
