#!/usr/bin/env bash
# llamacpp_server.sh — start llama.cpp's OpenAI-compatible server (the PyPI
# package llama-cpp-python[server]) as a *peer* for `kvmesh bench --compare`,
# on the same GGUF file kvmesh serves.
#
# This is a manual benchmarking aid. It is NEVER run in CI: the first run
# compiles llama.cpp from source and takes a long time.
#
# Usage:
#   scripts/llamacpp_server.sh [GGUF] [PORT] [THREADS] [EXTRA SERVER FLAGS...]
#     GGUF     default /root/.cache/kvmesh/models/SmolLM2-135M-Instruct.Q4_1.gguf
#     PORT     default 8090 (listens on 127.0.0.1 only)
#     THREADS  default 2 (used for both decode and prompt/batch threads)
#     anything after THREADS is passed on to `python -m llama_cpp.server`,
#     e.g. `--cache True` (see "Behaviour" below) or `--verbose False`.
#   Environment:
#     LLAMACPP_VENV          virtualenv to use/create (default /work/venvs/llamacpp)
#     LLAMACPP_VERSION       llama-cpp-python version to install (default 0.3.36)
#     LLAMACPP_INSTALL_ONLY  if set to 1, install (if needed) and exit without serving
#
# Install (only if `$LLAMACPP_VENV/bin/python -c 'import llama_cpp'` fails):
#   PyPI ships only the sdist of llama-cpp-python, so pip compiles the
#   vendored llama.cpp (llama-cpp-python 0.3.36: 140 compile steps). Measured
#   on a 2-core AMD EPYC (Zen 4) box, under `nice -n 19` with
#   CMAKE_BUILD_PARALLEL_LEVEL=2 while a kvmesh server used about one core:
#   439 s (~7.5 minutes) for the whole `pip install`, downloads included.
#   Expect longer on a busier machine. The build runs niced so it does not
#   starve other work. pip keeps the built wheel in its cache, so a second
#   venv on the same machine installs in seconds; that cache is keyed by the
#   sdist only, not by CMAKE_ARGS, so after changing the flags below clear it
#   (`pip cache remove llama_cpp_python`) or the old build comes back.
#
# Build flags (CMAKE_ARGS below), and why:
#   -DGGML_NATIVE=OFF   a -march=native build was seen to segfault on a
#                       multi-token eval on a CPU with AMX, so we do not let
#                       ggml detect the host; instead we name the ISA
#                       extensions explicitly (AMX stays OFF):
#   -DGGML_AVX/AVX2/FMA/F16C=ON, -DGGML_AVX512=ON (F, CD, VL, DQ, BW),
#   -DGGML_AVX512_VBMI/VNNI/BF16=ON
#                       what Zen 4 has. A CPU without AVX-512 needs these
#                       removed (the binary would die with SIGILL).
#   -DLLAVA_BUILD=OFF   skip the multimodal (mtmd/llava) library: not needed
#                       for text models and it shortens the build.
#
# Server flags, and why:
#   --n_ctx 8192               SmolLM2's trained context.
#   --n_threads/--n_threads_batch THREADS   decode and prefill threads.
#   --logits_all False         the server's default (True) computes and copies
#                              the logits of every prompt position into numpy;
#                              only logprobs need that, and kvmesh does not.
#   --interrupt_requests False the default (True) silently cuts a running
#                              stream short (it ends with [DONE], no
#                              finish_reason) as soon as another request
#                              waits, which would wreck a concurrent benchmark.
#   The chat template comes from the GGUF (ChatML for SmolLM2); no
#   --chat_format needed.
# Behaviour to know when comparing:
#   - One model, one sequence: a global lock serves requests strictly one at
#     a time (concurrent requests queue; no batching across requests).
#   - KV prefix reuse is built in, but only against the immediately previous
#     request's tokens ("Llama.generate: N prefix-match hit" in the log).
#     `--cache True` (RAM, --cache_size default 2 GiB) also saves a ~9 MB state
#     per finished request and restores the longest-prefix one, so
#     alternating prompts hit as well.
#   - `usage` (prompt/completion/total tokens) is in non-streamed responses
#     only: `stream_options.include_usage` is ignored, and there is no
#     `prompt_tokens_details.cached_tokens`.
set -euo pipefail

VENV="${LLAMACPP_VENV:-/work/venvs/llamacpp}"
VERSION="${LLAMACPP_VERSION:-0.3.36}"
MODEL="${1:-/root/.cache/kvmesh/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PORT="${2:-8090}"
THREADS="${3:-2}"
N_CTX=8192

LLAMACPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DLLAVA_BUILD=OFF"

if ! "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1 \
   || ! "$VENV/bin/python" -c 'import llama_cpp.server.app' >/dev/null 2>&1; then
    echo "llamacpp_server.sh: installing llama-cpp-python[server]==$VERSION into $VENV" >&2
    echo "llamacpp_server.sh: this compiles llama.cpp from source (see header for timing)" >&2
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    start=$(date +%s)
    CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        nice -n 19 "$VENV/bin/pip" install --verbose "llama-cpp-python[server]==$VERSION" >&2
    echo "llamacpp_server.sh: install took $(( $(date +%s) - start ))s" >&2
fi

if [ "${LLAMACPP_INSTALL_ONLY:-0}" = "1" ]; then
    exit 0
fi

if [ ! -f "$MODEL" ]; then
    echo "llamacpp_server.sh: model not found: $MODEL" >&2
    exit 1
fi

exec "$VENV/bin/python" -m llama_cpp.server \
    --model "$MODEL" \
    --host 127.0.0.1 \
    --port "$PORT" \
    --n_threads "$THREADS" \
    --n_threads_batch "$THREADS" \
    --n_ctx "$N_CTX" \
    --logits_all False \
    --interrupt_requests False \
    "${@:4}"
