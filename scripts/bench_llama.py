"""llama.cpp (llama-cpp-python) on a GGUF: the same measurements as the engine benchmark —
prefill of a prompt's tokens, then greedy decoding one token at a time.

    python bench_llama.py GGUF PROMPT_FILE --threads N --prompt-tokens 1024 --max-tokens 128

Prints one JSON line: prompt_tokens, prefill_secs, tokens, decode_secs, peak_rss_bytes.
"""

import argparse
import json
import resource
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("prompt_file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    llm = Llama(model_path=args.gguf, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=2048, verbose=False)
    tokens = llm.tokenize(open(args.prompt_file, encoding="utf-8").read().encode(), add_bos=False)[-args.prompt_tokens:]
    started = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - started
    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # The last position's logits, where llama.cpp wrote them (no copy).
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    generated = []
    started = time.perf_counter()
    while len(generated) < args.max_tokens:
        token = int(np.argmax(last_logits()))
        generated.append(token)
        if len(generated) == args.max_tokens:
            break
        llm.eval([token])
    decode = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"prompt_tokens": len(tokens), "prefill_secs": prefill, "tokens": len(generated), "decode_secs": decode, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
