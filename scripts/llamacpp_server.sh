#!/usr/bin/env bash
# llamacpp_server.sh — start llama.cpp's OpenAI-compatible server (the PyPI
# package llama-cpp-python[server]) as a *peer* for `kvmesh bench --compare`,
# on the same GGUF file kvmesh serves.
#
# This is a manual benchmarking aid. It is NEVER run in CI: the first run
# compiles llama.cpp from source and takes a long time.
#
# Usage:
#   scripts/llamacpp_server.sh [GGUF] [PORT] [THREADS]
#     GGUF     default /root/.cache/kvmesh/models/SmolLM2-135M-Instruct.Q4_1.gguf
#     PORT     default 8090 (listens on 127.0.0.1 only)
#     THREADS  default 2 (used for both decode and prompt/batch threads)
#   Environment:
#     LLAMACPP_VENV          virtualenv to use/create (default /work/venvs/llamacpp)
#     LLAMACPP_VERSION       llama-cpp-python version to install (default 0.3.36)
#     LLAMACPP_INSTALL_ONLY  if set to 1, install (if needed) and exit without serving
#
# Install (only if `$LLAMACPP_VENV/bin/python -c 'import llama_cpp'` fails):
#   PyPI ships only the sdist of llama-cpp-python, so pip compiles the
#   vendored llama.cpp. Measured on a 2-core AMD EPYC (Zen 4) box, under
#   `nice -n 19` with CMAKE_BUILD_PARALLEL_LEVEL=2 and another build running
#   alongside: __BUILD_TIME__ for the whole `pip install`. The build
#   runs niced so it does not starve other work on the machine.
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
# Server: prompt KV prefix reuse between consecutive requests is built into
# llama-cpp-python (it keeps the last sequence's KV and skips the common
# token prefix); requests to the one model are served one at a time.
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
    --n_ctx "$N_CTX"
