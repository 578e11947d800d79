#!/usr/bin/env bash
# gpu-check.sh: checks PRIP's CUDA backend on a machine with an NVIDIA GPU and measures it
# beside the CPU. About 8 minutes on one H100/H200 (most of it the build).
#
#   scripts/gpu-check.sh            # report in target/gpu-check/report.{md,json}
#
# Steps: (1) find the GPU and its driver, or stop at once; (2) install nvcc and the CUDA
# libraries from PyPI into target/gpu-check/venv, matched to the driver's CUDA version;
# (3) build `prip` and the prip-core/prip-trainer tests with --features cuda; (4) run
# those tests with PRIP_TEST_DEVICE=cuda:0 (the trainer's stage tests train on it);
# (5) refine the same prompts greedily with the packaged default on the CPU and the GPU
# and require identical text; (6) decode tokens/s at batch 1 and 32; (7) a few steps of
# each training stage (and `--gpus all` when the machine has several GPUs), training
# tokens/s; (8) peak GPU memory of each GPU step (nvidia-smi, 100 ms samples).
#
# Network: only the package registries (pip for the CUDA wheels and the base models, cargo
# for crates). Environment: GPU_CHECK_OUT (report folder), GPU_CHECK_SKIP_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "gpu-check: $*" >&2
  exit 1
}

# (1) The GPU, first and fast: no installs and no build on a machine without one.
command -v nvidia-smi >/dev/null 2>&1 ||
  die "no NVIDIA driver/GPU found (nvidia-smi is not installed); run this on a machine with an NVIDIA GPU"
gpus=$(timeout 30 nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version \
  --format=csv,noheader 2>/dev/null) || gpus=""
[ -n "$gpus" ] ||
  die "no NVIDIA driver/GPU found (nvidia-smi sees no GPU: $(timeout 10 nvidia-smi -L 2>&1 | head -n 1))"
started=$(date +%s)
n_gpus=$(printf '%s\n' "$gpus" | wc -l)
gpu_name=$(printf '%s\n' "$gpus" | head -n 1 | cut -d, -f1 | xargs)
cap=$(printf '%s\n' "$gpus" | head -n 1 | cut -d, -f2 | tr -d ' .')
gpu_mem=$(printf '%s\n' "$gpus" | head -n 1 | cut -d, -f3 | xargs)
driver=$(printf '%s\n' "$gpus" | head -n 1 | cut -d, -f4 | xargs)
drv_cuda=$(timeout 30 nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -n 1)
[ -n "$drv_cuda" ] || die "cannot read the driver's CUDA version from nvidia-smi"
major=${drv_cuda%%.*}
minor=${drv_cuda#*.}
echo "gpu-check: $n_gpus x $gpu_name (sm_$cap, $gpu_mem), driver $driver (CUDA $drv_cuda)"

out=${GPU_CHECK_OUT:-target/gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/log.txt"
: >"$log"
step() { echo "gpu-check: [$(($(date +%s) - started)) s] $*"; }

# (2) The toolkit, matched to the driver: candle's kernels are PTX that the driver compiles
# when loading them, and a driver cannot load PTX from an nvcc newer than itself.
venv="$out/venv"
step "installing nvcc and the CUDA libraries for CUDA $drv_cuda from PyPI"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >>"$log" 2>&1
if [ "$major" -ge 13 ]; then
  if [ "$minor" -ge 5 ]; then
    # The set CI compiles with (../shared/DESIGN.md).
    pkgs="nvidia-cuda-nvcc==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-nvvm==13.5.37
      nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-nvrtc==13.5.37"
  else
    pkgs="nvidia-cuda-nvcc==13.$minor.* nvidia-cuda-crt==13.$minor.* nvidia-nvvm==13.$minor.*
      nvidia-cuda-runtime==13.$minor.* nvidia-cuda-cccl nvidia-cuda-nvrtc==13.$minor.*"
  fi
  pkgs="$pkgs nvidia-cublas nvidia-curand nvidia-nccl-cu13"
  cudarc=$((13000 + 10 * (minor > 4 ? 4 : minor)))
elif [ "$major" -eq 12 ]; then
  pkgs="nvidia-cuda-nvcc-cu12==12.$minor.* nvidia-cuda-runtime-cu12==12.$minor.*
    nvidia-cuda-nvrtc-cu12==12.$minor.* nvidia-cuda-cccl-cu12 nvidia-cublas-cu12
    nvidia-curand-cu12 nvidia-nccl-cu12"
  # cudarc has bindings for 12.0-12.6, 12.8 and 12.9.
  if [ "$minor" -ge 9 ]; then m=9; elif [ "$minor" -eq 7 ]; then m=6; else m=$minor; fi
  cudarc=$((12000 + 10 * m))
else
  die "the NVIDIA driver is too old (CUDA $drv_cuda); PRIP's CUDA build needs a driver for CUDA 12 or newer"
fi
set -f # the version patterns (13.0.*) are for pip, not for the shell
# shellcheck disable=SC2086
timeout 240 "$venv/bin/pip" install -q $pkgs >>"$log" 2>&1 ||
  die "pip could not install the CUDA wheels for CUDA $drv_cuda (see $log)"
set +f
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
nvcc=$(find "$site/nvidia" -path '*/bin/nvcc' -type f | head -n 1)
[ -n "$nvcc" ] || die "no nvcc in the installed wheels (see $log)"
cuda=$(cd "$(dirname "$nvcc")/.." && pwd)
if [ "$major" -eq 12 ]; then
  # CUDA 12 wheels keep each component in its own folder (cuda_nvcc, cuda_runtime, ...):
  # give candle-kernels' build one include folder with all the headers.
  mkdir -p "$out/cuda12-include"
  for inc in "$site"/nvidia/*/include; do cp -rsf "$inc/." "$out/cuda12-include/"; done
  export CPATH="$out/cuda12-include${CPATH:+:$CPATH}"
fi

# The linker needs unversioned names (libcuda.so, libnccl.so, ...): the wheels ship only
# libX.so.N, and libcuda must be the driver's own, never a toolkit stub.
links="$out/cuda-links/lib"
rm -rf "$links" && mkdir -p "$links"
libcuda=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -n "$libcuda" ] || libcuda=$(find /usr/lib /usr/lib64 /usr/local -name 'libcuda.so.1' 2>/dev/null | head -n 1)
[ -n "$libcuda" ] || die "no NVIDIA driver library (libcuda.so.1) found although nvidia-smi works"
ln -s "$libcuda" "$links/libcuda.so"
libdirs=""
for lib in nccl nvrtc curand cublas cublasLt cudart; do
  f=$(find "$site/nvidia" -name "lib$lib.so.*" -type f 2>/dev/null | sort | head -n 1)
  [ -n "$f" ] || die "no lib$lib in the installed wheels (see $log)"
  ln -s "$f" "$links/lib$lib.so"
  libdirs="$libdirs:$(dirname "$f")"
done
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_TOOLKIT_ROOT_DIR="$out/cuda-links"
export CUDARC_CUDA_VERSION=$cudarc CUDA_COMPUTE_CAP=$cap
export LD_LIBRARY_PATH="$links${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="$PWD/target/gpu-check/build" CARGO_INCREMENTAL=0

# (3) The build: one release profile for the binary and the tests, so they share crates.
step "building prip and the tests with --features cuda (CUDA bindings $cudarc, sm_$cap)"
features="--features prip-core/cuda,prip-trainer/cuda"
timeout 420 cargo build --release --locked --features cuda --bin prip >>"$log" 2>&1 ||
  die "the CUDA build failed (see $log)"
prip="$CARGO_TARGET_DIR/release/prip"
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  timeout 300 cargo test --release --locked -p prip-core -p prip-trainer $features --no-run \
    >>"$log" 2>&1 || die "the CUDA test build failed (see $log)"
fi

# Peak GPU memory of a command: nvidia-smi samples every 100 ms while it runs.
peak_of() { # peak_of NAME CMD...: runs CMD, writes $out/mem-NAME (MiB above the idle level)
  local name=$1 sampler base rc=0
  shift
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n 1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 \
    >"$out/mem-$name.samples" 2>/dev/null &
  sampler=$!
  "$@" || rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sort -n "$out/mem-$name.samples" | tail -n 1 | awk -v b="$base" '{print $1 - b}' >"$out/mem-$name"
  return $rc
}

# (4) The device-independent tests, on the GPU.
tests="skipped"
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
  step "running the prip-core and prip-trainer tests on cuda:0"
  # shellcheck disable=SC2086
  if PRIP_TEST_DEVICE=cuda:0 timeout 300 cargo test --release --locked -p prip-core \
    -p prip-trainer $features >"$out/tests.txt" 2>&1; then
    tests="passed"
  else
    tests="FAILED (see $out/tests.txt)"
  fi
  step "tests: $tests"
fi

# (5) + (6) Refinement: the packaged default, greedy, CPU against GPU.
export PRIP_HOME="$out/prip-home"
step "fetching the base models of the packaged default"
timeout 300 "$prip" models fetch >>"$log" 2>&1 || die "prip models fetch failed (see $log)"
subjects=("a little cat running in the woods" "portrait of an old fisherman"
  "a castle on a hill at night" "a bowl of fruit on a table" "a city street in the rain"
  "a dragon over the mountains" "a girl reading in a garden" "a spaceship landing on mars")
prompts="$out/prompts.txt"
: >"$prompts"
for i in $(seq 0 31); do echo "${subjects[$((i % 8))]}, view $((i / 8 + 1))" >>"$prompts"; done
refine() { # refine DEVICE FILE OUT
  timeout 300 "$prip" refine --json --temperature 0 --max-new-tokens 40 --device "$1" \
    <"$2" >"$3" 2>>"$log"
}
head -n 1 "$prompts" >"$out/one.txt"
step "refining on the CPU (batch 1 and 32)"
refine cpu "$out/one.txt" "$out/cpu-warm.jsonl" || die "refining on the CPU failed (see $log)"
refine cpu "$out/one.txt" "$out/cpu-b1.jsonl" || die "refining on the CPU failed (see $log)"
refine cpu "$prompts" "$out/cpu-b32.jsonl" || die "refining on the CPU failed (see $log)"
step "refining on cuda:0 (batch 1 and 32)"
refine cuda:0 "$out/one.txt" "$out/gpu-warm.jsonl" || die "refining on cuda:0 failed (see $log)"
peak_of refine-b1 refine cuda:0 "$out/one.txt" "$out/gpu-b1.jsonl" ||
  die "refining on cuda:0 failed (see $log)"
peak_of refine-b32 refine cuda:0 "$prompts" "$out/gpu-b32.jsonl" ||
  die "refining 32 prompts on cuda:0 failed (see $log)"

# (7) Training: a few steps of each stage on a small corpus made here.
data="$out/train-data"
mkdir -p "$data"
python3 - "$data" <<'PY'
import json, sys
d = sys.argv[1]
subjects = ["a cat in the woods", "an old fisherman", "a castle at night", "a bowl of fruit",
            "a rainy city street", "a dragon over mountains", "a girl reading", "a ship at sea"]
details = ["oil painting", "highly detailed", "golden hour", "by monet",
           "trending on artstation", "soft light", "8k", "cinematic lighting"]
with open(f"{d}/system.jsonl", "w") as f:
    for i in range(256):
        s = subjects[i % 8]
        det = ", ".join(details[(i + k) % 8] for k in range(3 + i % 3))
        f.write(json.dumps({"prompt": f"{s}, {det}"}) + "\n")
with open(f"{d}/prefs.jsonl", "w") as f:
    for i in range(256):
        s = subjects[i % 8]
        c = [{"text": f"{s}, {details[(i + k) % 8]}", "score": float(k)} for k in range(3)]
        f.write(json.dumps({"prompt": s, "candidates": c}) + "\n")
PY
train() { # train DEVICE NAME STEPS STAGE-ARGS...: one stage into $out/train-NAME
  local device=$1 name=$2 steps=$3 corpus=system.jsonl
  shift 3
  [ "$1" = warmup-encoder ] && corpus=prefs.jsonl
  rm -rf "$out/train-$name"
  mkdir -p "$out/train-$name"
  cat >"$out/train-$name/config.toml" <<EOF
base = "default"
out = "model"
train = ["$data/$corpus"]
device = "$device"
[run]
steps = $steps
batch_size = 8
save_every = 1000
EOF
  timeout 300 "$prip" train "$@" "$out/train-$name/config.toml" >>"$log" 2>&1
}
stages=("warmup-encoder" "warmup-decoder" "adapt --system gpucheck")
for i in 0 1 2; do
  s=${stages[$i]}
  step "training $s: 4 steps on the CPU, 12 on cuda:0"
  # shellcheck disable=SC2086
  train cpu "cpu-$i" 4 $s || die "training $s on the CPU failed (see $log)"
  # shellcheck disable=SC2086
  peak_of "train-$i" train cuda:0 "gpu-$i" 12 $s || die "training $s on cuda:0 failed (see $log)"
done
multi=""
if [ "$n_gpus" -gt 1 ]; then
  step "training warmup-decoder data-parallel on all $n_gpus GPUs"
  if train cuda:0 multi 12 warmup-decoder --gpus all; then multi="ok"; else multi="FAILED"; fi
fi

# (8) The report.
step "writing the report"
python3 - "$out" "$gpu_name" "$cap" "$gpu_mem" "$driver" "$drv_cuda" "$n_gpus" "$tests" \
  "$multi" "$(($(date +%s) - started))" <<'PY'
import json, os, statistics, sys
out, gpu, cap, gpu_mem, driver, drv_cuda, n_gpus, tests, multi, secs = sys.argv[1:]

def rows(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]

def decode_tps(path):
    r = [x for x in rows(path) if "timings" in x]
    if not r:
        return None
    t = r[0]["timings"]
    toks = sum(x["timings"]["new_tokens"] for x in r)
    return round(toks / max(t["decode_ms"] - t.get("prefill_ms", 0), 1e-6) * 1000, 1)

def mem(name):
    try:
        return int(float(open(f"{out}/mem-{name}").read().strip()))
    except (OSError, ValueError):
        return None

def train_tps(name, stage_dir):
    runs = f"{out}/train-{name}/model/runs"
    try:
        stage = next(d for d in os.listdir(runs) if d.startswith(stage_dir))
        m = rows(f"{runs}/{stage}/metrics.jsonl")
    except (OSError, StopIteration):
        return None
    tps = [x["tokens_per_s"] for x in m[1:]] or [x["tokens_per_s"] for x in m]
    return round(statistics.median(tps), 1) if tps else None

cpu = {x["prompt"]: x.get("refined") for x in rows(f"{out}/cpu-b32.jsonl")}
gpu_r = {x["prompt"]: x.get("refined") for x in rows(f"{out}/gpu-b32.jsonl")}
differ = [p for p in cpu if cpu[p] != gpu_r.get(p)]
stages = [("warmup-encoder", "warmup-encoder"), ("warmup-decoder", "warmup-decoder"),
          ("adapt", "adapt-")]
report = {
    "gpu": gpu, "gpus": int(n_gpus), "compute_cap": cap, "gpu_memory": gpu_mem,
    "driver": driver, "driver_cuda": drv_cuda, "tests_on_gpu": tests,
    "greedy_identical": f"{len(cpu) - len(differ)} of {len(cpu)}",
    "greedy_differing_prompts": differ,
    "decode_tokens_per_s": {
        "cpu": {"batch_1": decode_tps(f"{out}/cpu-b1.jsonl"),
                "batch_32": decode_tps(f"{out}/cpu-b32.jsonl")},
        "gpu": {"batch_1": decode_tps(f"{out}/gpu-b1.jsonl"),
                "batch_32": decode_tps(f"{out}/gpu-b32.jsonl")},
    },
    "train_tokens_per_s": {
        s: {"cpu": train_tps(f"cpu-{i}", d), "gpu": train_tps(f"gpu-{i}", d)}
        for i, (s, d) in enumerate(stages)
    },
    "peak_gpu_memory_mib": {
        "refine_batch_1": mem("refine-b1"), "refine_batch_32": mem("refine-b32"),
        **{f"train_{s}": mem(f"train-{i}") for i, (s, _) in enumerate(stages)},
    },
    "seconds": int(secs),
}
if multi:
    report["data_parallel_all_gpus"] = {
        "status": multi, "train_tokens_per_s": train_tps("multi", "warmup-decoder")}
with open(f"{out}/report.json", "w") as f:
    json.dump(report, f, indent=2)
d, t, m = report["decode_tokens_per_s"], report["train_tokens_per_s"], report["peak_gpu_memory_mib"]
md = [f"## GPU check: {n_gpus} x {gpu} (sm_{cap}, {gpu_mem}), driver {driver} (CUDA {drv_cuda})", "",
      f"Tests on the GPU: {tests}. Greedy refinements identical on CPU and GPU: "
      f"{report['greedy_identical']}. Took {secs} s.", "",
      "| | CPU | GPU (cuda:0) | peak GPU memory (MiB) |", "| --- | --- | --- | --- |",
      f"| decode tokens/s, batch 1 | {d['cpu']['batch_1']} | {d['gpu']['batch_1']} | {m['refine_batch_1']} |",
      f"| decode tokens/s, batch 32 | {d['cpu']['batch_32']} | {d['gpu']['batch_32']} | {m['refine_batch_32']} |"]
for s, _ in stages:
    md.append(f"| training tokens/s, {s} (batch 8) | {t[s]['cpu']} | {t[s]['gpu']} | {m['train_' + s]} |")
if multi:
    dp = report["data_parallel_all_gpus"]
    md += ["", f"Data-parallel warmup-decoder on all {n_gpus} GPUs (batch 8 each): {dp['status']}, "
           f"{dp['train_tokens_per_s']} tokens/s."]
if differ:
    md += ["", "Prompts whose greedy refinement differs between CPU and GPU:"] + [f"- {p}" for p in differ]
with open(f"{out}/report.md", "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
PY
step "report: $out/report.md and $out/report.json"
case "$tests" in FAILED*) die "tests failed on the GPU: $tests" ;; esac
[ "$multi" != FAILED ] || die "data-parallel training on all GPUs failed (see $log)"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if not r["greedy_differing_prompts"] else 1)' \
  "$out/report.json" || die "greedy refinements differ between the CPU and the GPU (see $out/report.md)"
step "all checks passed"
