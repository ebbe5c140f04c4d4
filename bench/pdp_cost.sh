#!/usr/bin/env bash
# PDP's cost per training epoch against plain training of the same model (issue 24,
# deliverable 3), side by side in one run: each round trains one epoch of N images plainly
# (`lopper train`, from random weights) and, from the run's trained weights, through the prune
# path without masks (control: PDP whose ramp starts at the last step) and under PDP's soft
# masks (weights at 90% and 2:4, channels at macs=0.5), with GMP's hard masks for reference; the figure is the training loop's images/s
# (evaluation, BatchNorm re-estimation and fine-tuning are outside it). Prints one line per
# run and, at the end, each mode's mean images/s over the plain mean.
#
#   LOPPER=target/release/lopper RUN=bench/runs/resnet20-10k N=3840 ROUNDS=2 bench/pdp_cost.sh
set -euo pipefail
LOPPER=${LOPPER:-target/release/lopper}
RUN=${RUN:?a trained run of the model to measure}
N=${N:-3840}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench/runs/pdp-cost}
MODEL=$(sed -n 's/^model = "\(.*\)"/\1/p' "$RUN/config.toml")
DATASET=$(sed -n 's/^dataset = "\(.*\)"/\1/p' "$RUN/config.toml")
mkdir -p "$OUT"
rate() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['images_per_sec'])" "$1"; }
: > "$OUT/rates.txt"
for round in $(seq "$ROUNDS"); do
  d="$OUT/plain-$round"; rm -rf "$d"
  "$LOPPER" train --model "$MODEL" --dataset "$DATASET" --epochs 1 --train-limit "$N" --test-limit 128 --quiet --out "$d" > /dev/null
  r=$(rate "$d/metrics.jsonl"); echo "plain $r" | tee -a "$OUT/rates.txt"
  for mode in "control sparsity=0.9" "pdp sparsity=0.9" "pdp nm=2:4" "pdp macs=0.5" "gmp sparsity=0.9"; do
    set -- $mode
    method=$1 extra=()
    [[ $1 == control ]] && method=pdp extra=(--pdp-start 0.98 --pdp-end 1.0)
    d="$OUT/$1-${2//[=:.]/-}-$round"; rm -rf "$d"
    "$LOPPER" prune --run "$RUN" --method "$method" --budget "$2" --"$method"-epochs 1 "${extra[@]}" \
      --finetune-epochs 0 --train-limit "$N" --test-limit 128 --bn-batches 1 --quiet --out "$d" > /dev/null
    r=$(rate "$d/allocation/metrics.jsonl"); echo "$1 $2 $r" | tee -a "$OUT/rates.txt"
  done
done
python3 - "$OUT/rates.txt" <<'PY'
import sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    *mode, r = line.split()
    runs[" ".join(mode)].append(float(r))
plain = sum(runs["plain"]) / len(runs["plain"])
for mode, rs in runs.items():
    m = sum(rs) / len(rs)
    print(f"| {mode} | {m:.1f} images/s | {' / '.join(f'{r:.1f}' for r in rs)} | {m / plain:.3f} | {100 * (plain / m - 1):+.1f}% |")
PY
