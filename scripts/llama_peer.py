"""llama.cpp's prefill and decode times on a GGUF file, measured as `cargo model-export bench`
measures its own engines (the same prompt, the same decode steps, warm-up runs, repetitions),
through llama-cpp-python. Embedded in the binary and run by `bench` with the Python that
LLAMA_CPP_PYTHON names (or the compatibility checks' venv, or python3); prints one JSON line.

usage: python llama_peer.py MODEL.gguf PROMPT_TOKENS DECODE_TOKENS WARMUP REPETITIONS THREADS
"""
import json
import sys
import time

try:
    import llama_cpp
except ImportError as e:
    print(json.dumps({"unavailable": f"llama_cpp does not import: {e}"}))
    sys.exit(0)

path = sys.argv[1]
prompt_tokens, decode_tokens, warmup, repetitions, threads = (int(a) for a in sys.argv[2:7])
llm = llama_cpp.Llama(
    model_path=path,
    n_ctx=prompt_tokens + decode_tokens + 8,
    n_batch=max(prompt_tokens, 8),
    n_ubatch=max(prompt_tokens, 8),
    n_threads=threads,
    n_threads_batch=threads,
    verbose=False,
)
vocab = llm.n_vocab()
# The token ids bench feeds its own engines.
prompt = [(i * 7919 + 13) % vocab for i in range(prompt_tokens)]
prefill, decode = [], []
for rep in range(warmup + repetitions):
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prefill_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    for i in range(decode_tokens):
        llm.eval([(i * 31 + 5) % vocab])
    decode_ms = (time.perf_counter() - started) * 1e3 / max(decode_tokens, 1)
    if rep >= warmup:
        prefill.append(prefill_ms)
        decode.append(decode_ms)
print(json.dumps({"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "prefill_ms": prefill, "decode_ms": decode}))
