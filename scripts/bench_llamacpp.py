#!/usr/bin/env python3
"""kvmesh's engine against llama.cpp on the same GGUF file and thread count, in one run.

Not part of the default build or CI: llama-cpp-python compiles llama.cpp (~25 minutes on a
2-core machine). Install it once with `python3 -m pip install llama-cpp-python`, build kvmesh
(`cargo build --release -p kvmesh`), then run:

    python3 scripts/bench_llamacpp.py [--threads 2] [--kvmesh target/release/kvmesh]

It runs `kvmesh bench engine --json`, then the same measurements through llama.cpp:
prefill throughput of a 512-token prompt, batch-1 decode throughput at context 512, and
prints both with kvmesh / llama.cpp ratios. Prompts are random ordinary tokens from a fixed
seed, as in kvmesh's bench.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time


def kvmesh_numbers(binary, threads):
    out = subprocess.run(
        [binary, "bench", "engine", "--json", "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def llamacpp_numbers(model_path, threads, decode_tokens):
    from llama_cpp import Llama  # imported late: the script explains how to install it

    llm = Llama(
        model_path=model_path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=4096,
        n_batch=512,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    rng = random.Random(42)
    # Skip the control tokens at the start of SmolLM2's vocabulary.
    prompt = [rng.randrange(17, n_vocab) for _ in range(512)]

    prefill = []
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - t))

    decode = []
    for _ in range(3):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        # One token per eval, as decode does; llama.cpp computes the logits of each. The token
        # fed back is fixed, since which token it is does not change the cost.
        for i in range(decode_tokens):
            llm.eval([prompt[i]])
        decode.append(decode_tokens / (time.perf_counter() - t))
    return {"prefill_512": max(prefill), "decode_b1_ctx512": max(decode)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--kvmesh", default="target/release/kvmesh")
    p.add_argument("--model", default=os.path.join(
        os.environ.get("KVMESH_MODELS_DIR", os.path.expanduser("~/.cache/kvmesh/models")),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--decode-tokens", type=int, default=64)
    args = p.parse_args()
    if not os.path.isfile(args.model):
        sys.exit(f"{args.model} not found: run `kvmesh model fetch` first")

    k = kvmesh_numbers(args.kvmesh, args.threads)
    l = llamacpp_numbers(args.model, args.threads, args.decode_tokens)
    k_prefill = next(x["tokens_per_s"] for x in k["prefill"] if x["size"] == 512)
    k_decode = {x["size"]: x["tokens_per_s"] for x in k["decode"]}
    rows = [
        ("prefill 512 tokens (tok/s)", k_prefill, l["prefill_512"]),
        ("decode batch 1, ctx 512 (tok/s)", k_decode[1], l["decode_b1_ctx512"]),
        ("decode batch 16 vs llama.cpp batch 1", k_decode[16], l["decode_b1_ctx512"]),
    ]
    print(f"threads {args.threads}, model {args.model}")
    print(f"{'':40} {'kvmesh':>10} {'llama.cpp':>10} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:40} {a:10.1f} {b:10.1f} {a / b:7.2f}")
    print(f"kvmesh TTFT 2048 tokens: cold {k['ttft_cold_ms']:.0f} ms, "
          f"{k['cached_tokens']} cached {k['ttft_cached_ms']:.0f} ms ({k['ttft_speedup']:.1f}x)")


if __name__ == "__main__":
    main()
