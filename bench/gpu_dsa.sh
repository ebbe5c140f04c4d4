#!/usr/bin/env bash
# DSA vs the iterative baseline on a GPU (BENCHMARKS.md h and i), with each pipeline paying for its
# own kernel compilation.
#
#   LOPPER=path/to/lopper bench/gpu_dsa.sh          # lopper built with --features wgpu
#
# Burn's GPU backends compile (and autotune) kernels for every new tensor shape and keep the
# results on disk under the user cache directory. A pruned model has new shapes, the
# iterative method makes a new set at each of its steps, and whichever pipeline runs first
# would leave its compiled kernels to the next. So the script trains the dense model, saves
# the cache as it is then (what a user who has just trained the dense model on this machine
# has), and restores that state before every pipeline; the table at the end is
# bench/dsa_table.py's.
#
# Knobs: DEVICE (wgpu), DENSE (a trained run to use instead of training one), EPOCHS (30),
# FT (2), BUDGETS ("0.5 0.3"), SEEDS ("0 1"), OUT (bench/runs/gpu), PRUNE_FLAGS (added to
# every prune; e.g. `--train-limit 256` for a smoke test), DSA_EPOCHS and DSA_FLAGS (added to
# the DSA prunes). With neither set the DSA prunes run with DSA's defaults from a trained
# run: i's setting plus `--fisher-decay 0.8` (j) and `--rho 10` (l). i ran with
# DSA_FLAGS="--admm-metric cost-share --dsa-schedule constant --hard-tail 0.5 --fisher-decay 1
# --rho 1"; h with DSA_EPOCHS=0.5 DSA_FLAGS="--admm-metric cost-share --dsa-schedule cosine
# --hard-tail 0 --fisher-decay 1 --rho 1" (lopper before l also trained i's hard tail under
# the masks of the ratios a, not of the feasible iterate z).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
export LOPPER_DATA_DIR="${LOPPER_DATA_DIR:-$(cd .. && pwd)/shared/data}"
lopper="$(realpath "${LOPPER:?set LOPPER to a lopper binary built with --features wgpu}")"
device="${DEVICE:-wgpu}"
dsa_flags="${DSA_FLAGS:-}${DSA_EPOCHS:+ --dsa-epochs $DSA_EPOCHS}"
out="$(realpath -m "${OUT:-bench/runs/gpu}")"
mkdir -p "$out"
# A cache of our own: saved and restored whole, and nothing else of the user's is touched.
export XDG_CACHE_HOME="$out/cache"
mkdir -p "$XDG_CACHE_HOME"
# CubeCL puts its cache under the Cargo project's target/ when run inside one; from $out it
# uses XDG_CACHE_HOME.
cd "$out"

dense="${DENSE:-}"
if [ -z "$dense" ]; then
  dense="$out/dense"
  "$lopper" train --model resnet20 --dataset cifar10 --epochs "${EPOCHS:-30}" --device "$device" \
    --out "$dense" --quiet
fi
rm -rf "$out/cache-dense"
cp -a "$XDG_CACHE_HOME" "$out/cache-dense"

# run NAME ARGS...: one pipeline from the dense state of the cache.
runs=()
run() {
  local name=$1
  shift
  rm -rf "$XDG_CACHE_HOME" "$out/$name"
  cp -a "$out/cache-dense" "$XDG_CACHE_HOME"
  # shellcheck disable=SC2086
  "$lopper" prune --quiet --device "$device" --run "$dense" --finetune-epochs "${FT:-2}" \
    --lr 0.01 --out "$out/$name" ${PRUNE_FLAGS:-} "$@"
  echo "done: $name" >&2
  runs+=("$out/$name")
}

for b in ${BUDGETS:-0.5 0.3}; do
  for s in ${SEEDS:-0 1}; do
    # shellcheck disable=SC2086
    run "dsa-$b-s$s" --budget "macs=$b" --method dsa $dsa_flags --seed "$s"
    run "iterative-$b-s$s" --budget "macs=$b" --method iterative --seed "$s"
  done
done
# The widths per group are in each run's prune_report.json.
python3 "$repo/bench/dsa_table.py" "$dense" "${runs[@]}"
