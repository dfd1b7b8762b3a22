"""onnxruntime-genai's own int4 model of a Hugging Face folder, timed as `cargo model-export
bench` times its engines: the same prompt ids, decode steps, warm-up runs and repetitions, on the
same thread count. Run by hand (scripts/genai_compare.sh), never in CI: the builder needs torch.

usage: python genai_peer.py MODEL_DIR PROMPT_TOKENS DECODE_TOKENS WARMUP REPETITIONS THREADS

MODEL_DIR is the builder's output (`python -m onnxruntime_genai.models.builder -i HF -o DIR
-p int4 -e cpu`). Prints one JSON line: prefill ms, decode ms/token (medians and ranges), peak
RSS of this process, and the model's size on disk.
"""
import json
import os
import statistics
import sys
import time

import onnxruntime_genai as og

path = sys.argv[1]
prompt_tokens, decode_tokens, warmup, repetitions, threads = (int(a) for a in sys.argv[2:7])

# The builder writes no thread count; bench gives every engine the same one.
config_path = os.path.join(path, "genai_config.json")
config = json.load(open(config_path))
config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
config["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
json.dump(config, open(config_path, "w"), indent=4)

model = og.Model(path)
vocab = config["model"]["vocab_size"]
# The token ids bench feeds its own engines.
prompt = [(i * 7919 + 13) % vocab for i in range(prompt_tokens)]
prefill, decode = [], []
for rep in range(warmup + repetitions):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt_tokens + decode_tokens + 1, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(prompt)
    prefill_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    for _ in range(decode_tokens):
        generator.generate_next_token()
    decode_ms = (time.perf_counter() - started) * 1e3 / decode_tokens
    del generator
    if rep >= warmup:
        prefill.append(prefill_ms)
        decode.append(decode_ms)

peak_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
spread = lambda xs: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
print(json.dumps({
    "engine": f"onnxruntime-genai {og.__version__}",
    "prefill_ms": spread(prefill),
    "decode_ms_per_token": spread(decode),
    "peak_rss_bytes": peak_kib * 1024,
    "size_bytes": size,
}))
