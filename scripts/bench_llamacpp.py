#!/usr/bin/env python3
"""kvmesh's engine against llama.cpp on the same GGUF file and thread count, in one run.

Not part of the default build or CI: llama-cpp-python compiles llama.cpp (~25 minutes on a
2-core machine). Install it once with `python3 -m pip install llama-cpp-python`, build kvmesh
(`cargo build --release -p kvmesh`), then run:

    python3 scripts/bench_llamacpp.py [--threads 2] [--kvmesh target/release/kvmesh]

It alternates `kvmesh bench engine --json --repeat 1` with the same measurements through
llama.cpp (prefill throughput of a 512-token prompt, batch-1 decode throughput at context
512) for `--rounds` rounds, keeps the best of each number over the rounds, and prints both
with kvmesh / llama.cpp ratios. Alternating matters on a shared machine: other tenants'
load comes and goes over minutes, and measuring one side after the other let it favour
either (one 2026-11-28 run saw llama.cpp's batch-1 decode at 43 tok/s, the next at 72).
Prompts are random ordinary tokens from a fixed seed, as in kvmesh's bench.
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
        [binary, "bench", "engine", "--json", "--repeat", "1", "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def load_llamacpp(model_path, threads):
    from llama_cpp import Llama  # imported late: the script explains how to install it

    return Llama(
        model_path=model_path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=4096,
        n_batch=512,
        verbose=False,
    )


def llamacpp_numbers(llm, decode_tokens):
    rng = random.Random(42)
    # Skip the control tokens at the start of SmolLM2's vocabulary.
    prompt = [rng.randrange(17, llm.n_vocab()) for _ in range(512)]

    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t)

    llm.reset()
    llm.eval(prompt)
    t = time.perf_counter()
    # One token per eval, as decode does; llama.cpp computes the logits of each. The token fed
    # back is fixed, since which token it is does not change the cost.
    for i in range(decode_tokens):
        llm.eval([prompt[i]])
    decode = decode_tokens / (time.perf_counter() - t)
    return {"prefill_512": prefill, "decode_b1_ctx512": decode}


def kvmesh_row(k):
    decode = {x["size"]: x["tokens_per_s"] for x in k["decode"]}
    return {
        "prefill_512": next(x["tokens_per_s"] for x in k["prefill"] if x["size"] == 512),
        "decode_b1_ctx512": decode[1],
        "decode_b16_ctx512": decode[16],
        "ttft_cold_ms": k["ttft_cold_ms"],
        "ttft_cached_ms": k["ttft_cached_ms"],
        "cached_tokens": k["cached_tokens"],
    }


def llamacpp_system_info():
    """The SIMD features llama.cpp was built with (it compiles for the installing CPU)."""
    try:
        from llama_cpp import llama_cpp

        info = llama_cpp.llama_print_system_info().decode()
        on = [f.split("=")[0].strip() for f in info.split("|") if f.strip().endswith("= 1")]
        return " ".join(name.split(":")[-1].strip() for name in on) or info.strip()
    except Exception as e:  # older bindings: the numbers still stand
        return f"system info unavailable ({e})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--kvmesh", default="target/release/kvmesh")
    p.add_argument("--model", default=os.path.join(
        os.environ.get("KVMESH_MODELS_DIR", os.path.expanduser("~/.cache/kvmesh/models")),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating kvmesh / llama.cpp rounds; the best of each number is kept")
    args = p.parse_args()
    if not os.path.isfile(args.model):
        sys.exit(f"{args.model} not found: run `kvmesh model fetch` first")

    llm = load_llamacpp(args.model, args.threads)
    best_k, best_l = {}, {}
    simd = "?"
    for r in range(args.rounds):
        raw = kvmesh_numbers(args.kvmesh, args.threads)
        simd = raw.get("simd", simd)
        k = kvmesh_row(raw)
        l = llamacpp_numbers(llm, args.decode_tokens)
        print(f"round {r + 1}: kvmesh prefill {k['prefill_512']:.1f}, b1 "
              f"{k['decode_b1_ctx512']:.1f}, b16 {k['decode_b16_ctx512']:.1f}; llama.cpp "
              f"prefill {l['prefill_512']:.1f}, b1 {l['decode_b1_ctx512']:.1f} tok/s",
              flush=True)
        for key, v in k.items():
            better = min if key.startswith("ttft") else max
            best_k[key] = better(best_k.get(key, v), v)
        for key, v in l.items():
            best_l[key] = max(best_l.get(key, v), v)
    k, l = best_k, best_l
    rows = [
        ("prefill 512 tokens (tok/s)", k["prefill_512"], l["prefill_512"]),
        ("decode batch 1, ctx 512 (tok/s)", k["decode_b1_ctx512"], l["decode_b1_ctx512"]),
        ("decode batch 16 vs llama.cpp batch 1", k["decode_b16_ctx512"], l["decode_b1_ctx512"]),
    ]
    print(f"threads {args.threads}, model {args.model}, best of {args.rounds} alternating rounds")
    print(f"kvmesh kernels: {simd}; llama.cpp: {llamacpp_system_info()}")
    print(f"{'':40} {'kvmesh':>10} {'llama.cpp':>10} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:40} {a:10.1f} {b:10.1f} {a / b:7.2f}")
    print(f"kvmesh TTFT 2048 tokens: cold {k['ttft_cold_ms']:.0f} ms, "
          f"{k['cached_tokens']} cached {k['ttft_cached_ms']:.0f} ms "
          f"({k['ttft_cold_ms'] / k['ttft_cached_ms']:.1f}x)")


if __name__ == "__main__":
    main()
