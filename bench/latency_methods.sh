#!/usr/bin/env bash
# Channel methods to a latency budget side by side (issue 25, deliverable 4): from one dense
# run and its latency profile, IEE (halp criterion) against HALP and DSA at equal total
# epochs after the dense run: each method's own phase of 1 epoch, then E-1 fine-tuning
# epochs. Prints one row per prune: method, allocation, budget, seed, top-1 before / after
# fine-tuning, MACs kept, budget cost / limit (the measured latency over the budget, for a
# profile), the method's phase and the whole prune's wall time.
#
#   LOPPER=target/release/lopper RUN=bench/runs/lenet5 PROFILE=bench/runs/lenet5.latency.json \
#     SEEDS="0 1 2" EPOCHS=2 bench/latency_methods.sh
#
# EXTRA passes more flags to every prune (e.g. EXTRA="--train-limit 10000"), IEE_FLAGS to IEE's
# (e.g. IEE_FLAGS="--iee-h 6 --iee-j 6 --iee-q 6" where an epoch is short).
set -euo pipefail
LOPPER=${LOPPER:-target/release/lopper}
RUN=${RUN:?the dense run to prune}
PROFILE=${PROFILE:?the run model\'s latency profile (lopper profile)}
SEEDS=${SEEDS:-0}
EPOCHS=${EPOCHS:-2}
OUT=${OUT:-bench/runs/latency}
BUDGETS=${BUDGETS:-"latency=0.5"}
METHODS=${METHODS:-"iee halp dsa"}
EXTRA=${EXTRA:-}
IEE_FLAGS=${IEE_FLAGS:-}
mkdir -p "$OUT"
row() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/prune_report.json"))
m = r["macs"]
print(f'| {r["method"]} | {r["allocation"]} | {r["budget"]} | {100*r["top1_pruned"]:.2f}% | '
      f'{100*r["top1_finetuned"]:.2f}% | {m["after"]/m["before"]:.3f} | '
      f'{r["budget_cost"]/r["budget_limit"]:.3f} | {r["budget_met"]} | '
      f'{r["allocation_seconds"]:.0f} s | {r["seconds"]:.0f} s |')
PY
}
echo "| seed | method | allocation | budget | before fine-tuning | after | MACs kept | cost / limit | met | phase | total |"
for seed in $SEEDS; do
  for budget in $BUDGETS; do
    tag=${budget//[=:.]/-}
    for m in $METHODS; do
      case $m in
        # shellcheck disable=SC2206
        iee) flags=(--method iee --criterion halp --iee-epochs 1 $IEE_FLAGS) ;;
        # shellcheck disable=SC2206
        iee-taylor) flags=(--method iee --criterion taylor --iee-epochs 1 $IEE_FLAGS) ;;
        halp) flags=(--method halp --halp-epochs 1) ;;
        dsa) flags=(--method dsa --dsa-epochs 1) ;;
        *) echo "unknown method $m" >&2; exit 2 ;;
      esac
      d="$OUT/$m-$tag-s$seed"
      rm -rf "$d"
      # shellcheck disable=SC2086
      "$LOPPER" prune --run "$RUN" "${flags[@]}" --finetune-epochs $((EPOCHS - 1)) \
        --budget "$budget" --profile "$PROFILE" --seed "$seed" --quiet --out "$d" $EXTRA \
        > /dev/null
      echo "| $seed $(row "$d")"
    done
  done
done
