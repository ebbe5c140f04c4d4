#!/usr/bin/env bash
# Weight sparsity side by side (issues 23, 24, 25): from one dense run, magnitude (uniform,
# global, ERK) fine-tuned E epochs against GMP, PDP, RigL and IEE (1 pruning or
# sparse-training epoch + E-1 fine-tuning epochs; RigL for sparsity budgets only; RigL and IEE
# at their default ERK): equal total epochs. METHODS picks among magnitude, gmp, pdp, rigl and
# iee, ALLOCS the magnitude
# allocations for a sparsity budget, PDP_FLAGS adds flags to PDP (TAG names those runs),
# IEE_FLAGS to IEE (its cycles where an epoch is short: "--iee-h 6 --iee-j 6 --iee-q 6").
# Prints one line per prune: method, budget, seed, top-1 before / after fine-tuning, sparsity
# reached on the saved model, wall time.
#
#   LOPPER=target/release/lopper RUN=bench/runs/lenet5 SEEDS="0 1 2" EPOCHS=2 \
#     bench/weight_sparsity.sh
set -euo pipefail
LOPPER=${LOPPER:-target/release/lopper}
RUN=${RUN:?the dense run to prune}
SEEDS=${SEEDS:-0}
EPOCHS=${EPOCHS:-2}
OUT=${OUT:-bench/runs/weights}
BUDGETS=${BUDGETS:-"sparsity=0.9 nm=2:4"}
METHODS=${METHODS:-"magnitude gmp pdp rigl"}
ALLOCS=${ALLOCS:-"uniform global erk"}
PDP_FLAGS=${PDP_FLAGS:-}
IEE_FLAGS=${IEE_FLAGS:-}
TAG=${TAG:-}
mkdir -p "$OUT"
row() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/prune_report.json"))
s = r["sparsity"]
print(f'| {r["method"]} | {r["allocation"]} | {r["budget"]} | {100*r["top1_pruned"]:.2f}% | '
      f'{100*r["top1_finetuned"]:.2f}% | {100*s["sparsity"]:.2f}% | {r["budget_met"]} | {r["seconds"]:.0f} s |')
PY
}
for seed in $SEEDS; do
  for budget in $BUDGETS; do
    tag=${budget//[=:]/-}
    if [[ $METHODS == *magnitude* ]]; then
      if [[ $budget == sparsity=* ]]; then allocs=$ALLOCS; else allocs=""; fi
      for a in ${allocs:-none}; do
        d="$OUT/mag-$a-$tag-s$seed"
        rm -rf "$d"
        alloc=()
        [[ $a != none ]] && alloc=(--allocation "$a")
        "$LOPPER" prune --run "$RUN" --method magnitude "${alloc[@]}" --budget "$budget" \
          --finetune-epochs "$EPOCHS" --seed "$seed" --quiet --out "$d" > /dev/null
        echo "seed $seed $(row "$d")"
      done
    fi
    for m in gmp pdp rigl iee; do
      [[ $METHODS == *$m* ]] || continue
      # RigL moves single weights: unstructured budgets only.
      [[ $m == rigl && $budget != sparsity=* ]] && continue
      flags=()
      [[ $m == pdp && -n $PDP_FLAGS ]] && read -ra flags <<< "$PDP_FLAGS"
      [[ $m == iee && -n $IEE_FLAGS ]] && read -ra flags <<< "$IEE_FLAGS"
      d="$OUT/$m$TAG-$tag-s$seed"
      rm -rf "$d"
      "$LOPPER" prune --run "$RUN" --method $m --budget "$budget" --$m-epochs 1 "${flags[@]}" \
        --finetune-epochs $((EPOCHS - 1)) --seed "$seed" --quiet --out "$d" > /dev/null
      echo "seed $seed ${flags[*]} $(row "$d")"
    done
  done
done
