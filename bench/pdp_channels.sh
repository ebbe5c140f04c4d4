#!/usr/bin/env bash
# Channel pruning side by side (issue 24): from one dense run, PDP's channel mode against
# DSA, taylor with a global allocation and the iterative method, at equal total epochs after
# the dense run: PDP 1 soft-mask epoch + E-1 fine-tuning, DSA 1 allocation epoch + E-1,
# taylor E fine-tuning epochs, iterative E-1 fine-tuning epochs after its own short
# fine-tuning steps. Prints one line per prune: method, budget, seed, top-1 before / after
# fine-tuning, MACs after / before, budget met, wall time.
#
#   LOPPER=target/release/lopper RUN=bench/runs/lenet5 SEEDS="0 1 2" EPOCHS=2 \
#     bench/pdp_channels.sh
set -euo pipefail
LOPPER=${LOPPER:-target/release/lopper}
RUN=${RUN:?the dense run to prune}
SEEDS=${SEEDS:-0}
EPOCHS=${EPOCHS:-2}
OUT=${OUT:-bench/runs/channels}
BUDGETS=${BUDGETS:-"macs=0.5 macs=0.3"}
METHODS=${METHODS:-"pdp dsa taylor iterative"}
mkdir -p "$OUT"
row() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/prune_report.json"))
m = r["macs"]
print(f'| {r["method"]} | {r["allocation"]} | {r["budget"]} | {100*r["top1_pruned"]:.2f}% | '
      f'{100*r["top1_finetuned"]:.2f}% | {m["after"]/m["before"]:.3f} | {r["budget_met"]} | {r["seconds"]:.0f} s |')
PY
}
for seed in $SEEDS; do
  for budget in $BUDGETS; do
    tag=${budget//[=:.]/-}
    for m in $METHODS; do
      case $m in
        pdp) flags=(--method pdp --pdp-epochs 1 --finetune-epochs $((EPOCHS - 1))) ;;
        dsa) flags=(--method dsa --dsa-epochs 1 --finetune-epochs $((EPOCHS - 1))) ;;
        taylor) flags=(--method taylor --allocation global --finetune-epochs "$EPOCHS") ;;
        iterative) flags=(--method iterative --finetune-epochs $((EPOCHS - 1))) ;;
        *) echo "unknown method $m" >&2; exit 2 ;;
      esac
      d="$OUT/$m-$tag-s$seed"
      rm -rf "$d"
      "$LOPPER" prune --run "$RUN" "${flags[@]}" --budget "$budget" --seed "$seed" --quiet \
        --out "$d" > /dev/null
      echo "seed $seed $(row "$d")"
    done
  done
done
