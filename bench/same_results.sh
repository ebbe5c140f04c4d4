#!/usr/bin/env bash
# Issue 21's check that the prune pipeline's refactor changed no result: LeNet-5 on MNIST (the
# README's training recipe), pruned to macs=0.5 by l1/uniform, taylor/global, the iterative
# method and DSA with every flag spelled out, seed 0. Prints one row per method: test top-1
# before fine-tuning, after it, and the MACs kept.
#
#   LOPPER=path/to/lopper TAG=before bench/same_results.sh
#
# The dense run is trained once into bench/runs/same-lenet5 and reused; prunes go to
# bench/runs/same-$TAG-<method>.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOPPER_DATA_DIR="${LOPPER_DATA_DIR:-$(cd .. && pwd)/shared/data}"
lopper="${LOPPER:-target/release/lopper}"
tag="${TAG:-now}"
mkdir -p bench/runs
dense=bench/runs/same-lenet5
if [ ! -f "$dense/model.safetensors" ]; then
  "$lopper" train --model lenet5 --dataset mnist --epochs 2 --batch-size 64 --lr 0.05 --seed 0 --quiet --out "$dense"
fi
common=(--run "$dense" --budget macs=0.5 --finetune-epochs 1 --lr 0.01 --seed 0 --bn-batches 32 --round-to 1 --quiet --json)
declare -A flags=(
  [l1-uniform]="--method l1 --allocation uniform"
  [taylor-global]="--method taylor --allocation global --taylor-batches 16"
  [iterative]="--method iterative --criterion taylor --step-share 0.3 --step-batches 100 --taylor-batches 16"
  [dsa]="--method dsa --dsa-epochs 1.5 --dsa-schedule constant --ratio-every 5 --ratio-signal fisher --ratio-lr 1 --admm-metric cost-share --rho 10 --val-fraction 0.1 --fisher-decay 0.8 --channel-rank gamma --hard-tail 0.5"
)
echo "| method | top-1 before fine-tuning | top-1 after | MACs after | seconds | command |"
echo "|---|---|---|---|---|---|"
for m in l1-uniform taylor-global iterative dsa; do
  out="bench/runs/same-$tag-$m"
  rm -rf "$out"
  # shellcheck disable=SC2086
  "$lopper" prune "${common[@]}" ${flags[$m]} --out "$out" > "$out.json"
  python3 - "$out.json" "$m" "${common[*]} ${flags[$m]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {100*r['top1_pruned']:.2f}% | {100*r['top1_finetuned']:.2f}% | {r['macs']['after']:.0f} | {r['seconds']:.0f} | `lopper prune {sys.argv[3]} --out DIR` |")
PY
done
