#!/usr/bin/env bash
# The plugins as users install them: builds the prip-refiner wheel with maturin,
# installs it into a fresh virtualenv with no cargo on PATH, refines a prompt with the
# packaged default from `python -c`, and runs the ComfyUI and A1111 plugins' pytest
# suites against the installed package (PRIP_TEST_PACKAGE=installed: its own library,
# not the working tree's binding or target/). .ci/run runs it after `cargo test`.
#
#   adapters/python/test-wheel.sh           # dev profile: reuses what `cargo test` built
#   PROFILE=release adapters/python/test-wheel.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
profile=${PROFILE:-dev}
start=$SECONDS

# maturin (and cffi, which its cffi bindings need at build time) in their own venv.
python3 -m venv target/maturin-venv
target/maturin-venv/bin/pip install -q --disable-pip-version-check maturin==1.16.0 cffi==2.1.1
rm -rf target/wheels
(cd adapters/python && "$root/target/maturin-venv/bin/maturin" build --profile "$profile" --out "$root/target/wheels")
wheel=$(ls target/wheels/prip_refiner-*.whl)
echo "built $wheel ($(du -h "$wheel" | cut -f1)) in $((SECONDS - start)) s"

# A fresh virtualenv, and a PATH without cargo, rustc or the pyenv shims.
venv=$root/target/wheel-venv
python3 -m venv --clear "$venv"
plain="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if PATH=$plain command -v cargo >/dev/null; then
  echo "cargo is on the plain PATH ($(PATH=$plain command -v cargo)): the wheel test needs a PATH without it" >&2
  exit 1
fi
PATH=$plain pip install -q --disable-pip-version-check "$wheel" -r requirements-test.txt

# The README's promise: import, refine with the packaged default (base models in
# $PRIP_HOME, fetched on first use), from a folder far from this checkout.
(cd /tmp && PATH=$plain python -c '
import prip_refiner
with prip_refiner.Refiner(config={"device": "cpu"}) as prip:
    [r] = prip.refine([{"prompt": "a little cat running in the woods", "seed": 7}], {"max_new_tokens": 8})
print(prip_refiner.__version__, prip.library, r["refined"])
assert r["refined"].startswith("a little cat running in the woods")
')

# The plugins' suites through plugin-abi/tests/plugins.rs (which writes their tiny
# model), with the virtualenv's python3 first on PATH. Only the test harness uses cargo,
# by absolute path; pytest and the plugins run with the plain PATH. --workspace
# resolves features as `cargo test --workspace` did, so nothing is rebuilt.
cargo=$(rustup which cargo)
rustc=$(rustup which rustc)
PATH=$plain PRIP_TEST_PACKAGE=installed RUSTC=$rustc "$cargo" test --workspace --locked --test plugins -- --nocapture
echo "wheel test: $((SECONDS - start)) s"
