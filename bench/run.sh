#!/usr/bin/env bash
# PRIP's speed beside its peers, measured in one run on this machine (issue 14).
#
#   bench/run.sh            # set up bench/.venv (first run: pip builds llama.cpp), then
#                           # peers, then `cargo bench -p prip-core --bench refine`
#
# Writes target/bench/peers.json, target/bench/refine.json and target/bench/refine.md
# (the README's performance table). The peers decode the very GGUF PRIP ships, fetched
# through PRIP's model store; nothing here is part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${BENCH_THREADS:-$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')}
venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # llama-cpp-python compiles llama.cpp for this CPU (a few minutes on 2 cores).
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q -r bench/requirements.txt
fi
mkdir -p target/bench
cargo build --release --locked -p prip --bin prip
target/release/prip models fetch smollm2-135m >/dev/null
gguf="$(target/release/prip models info smollm2-135m | awk '/^path:/ {print $2}')/SmolLM2-135M-Instruct.Q4_1.gguf"
"$venv/bin/python" bench/peers.py --gguf "$gguf" --threads "$threads" --out target/bench/peers.json
# cargo runs a bench in its package's folder: absolute paths.
CANDLE_NUM_THREADS=$threads cargo bench --locked -p prip-core --bench refine -- \
  --peers "$PWD/target/bench/peers.json" --out "$PWD/target/bench" --baseline
