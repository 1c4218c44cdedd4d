#!/usr/bin/env bash
# serving_sweep.sh: the rate sweep of docs/bench/serving.md, "highest sustained rate with TTFT
# p99 under 2 s", kvmesh against llama.cpp's server on the multi-turn workload, alternating.
#
# Start both servers first (never in CI: llama.cpp compiles for minutes):
#   scripts/llamacpp_server.sh ~/.cache/kvmesh/models/SmolLM2-135M-Instruct.Q4_1.gguf 8090 2 --cache True &
#   target/release/kvmesh serve --port 8000 &
# then: scripts/serving_sweep.sh [OUT_DIR]
# Each run uses a fresh seed, so no run reuses the text (and the cache) of another.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/serving-sweep}"
mkdir -p "$OUT"
K=target/release/kvmesh
MT="--workload multi-turn --num-requests 40 --turns 8 --max-active-sessions 8 \
    --shared-prefix-tokens 64 --prompt-tokens 32 --output-tokens 64"
seed=1
for pair in "0.2 1.0" "0.3 1.5" "0.4 2.0" "0.6 2.5" "0.8 3.0"; do
  read -r llama_rate kvmesh_rate <<< "$pair"
  for side in "llama.cpp $llama_rate http://127.0.0.1:8090" "kvmesh $kvmesh_rate http://127.0.0.1:8000"; do
    read -r name rate url <<< "$side"
    seed=$((seed + 1))
    # shellcheck disable=SC2086
    $K bench --url "$url" $MT --rate "$rate" --seed "$seed" --json "$OUT/$name-$rate.json" > /dev/null
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'rate', sys.argv[3], 'TTFT p50 %.0f p99 %.0f ms, output %.1f tok/s, %.3f req/s, failed %d' % (d['median_ttft_ms'], d['p99_ttft_ms'], d['output_throughput'], d['request_throughput'], d['failed']))" "$OUT/$name-$rate.json" "$name" "$rate"
  done
done
