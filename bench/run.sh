#!/usr/bin/env bash
# lopper benchmarks: one command, results as Markdown tables on stdout.
#
#   bench/run.sh throughput   # a/s/t. training step of MODELS (resnet20 mobilenet_v2 vgg11):
#                             # lopper's kernels vs Burn's ops, then lopper vs PyTorch CPU
#                             # alternating ROUNDS (2) times; then resnet20's step profile
#   bench/run.sh epoch        # one full resnet20 CIFAR-10 epoch, lopper then PyTorch
#   bench/run.sh lenet5       # b. lenet5 on MNIST, 2 epochs: test top-1 and wall time
#   bench/run.sh resnet20     # c. resnet20 on CIFAR-10, the dense baseline (about an hour)
#   bench/run.sh latency      # latency model vs measured latency of 10 random prunings
#   bench/run.sh prune        # resnet20 to macs=0.5: l1/uniform, taylor/global, and Torch-Pruning
#                             # (needs bench/runs/resnet20-cifar10 from `resnet20`)
#   bench/run.sh dsa-lenet5   # DSA vs iterative vs one-shot taylor/global on lenet5, macs=0.5
#                             # and 0.3, and DSA from scratch vs dense training + DSA
#   bench/run.sh dsa-resnet20 # the same on resnet20/CIFAR-10 (hours on a CPU; no scratch row
#                             # unless SCRATCH=1). Knobs: FT_EPOCHS, DSA_EPOCHS, ITER_LONG,
#                             # BUDGETS ("0.5 0.3"), ROWS ("taylor iterative iterative-300 dsa"),
#                             # LOPPER (the binary)
#   bench/run.sh latency-budgets # latency=... budgets end to end: measured result vs budget
#   bench/run.sh all          # a, b, c and latency
#
# Data from LOPPER_DATA_DIR (default ../shared/data). PyTorch comes from bench/.venv
# (python3 -m venv bench/.venv && bench/.venv/bin/pip install torch torchvision torch-pruning); without it
# the PyTorch column is skipped. Runs go to bench/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOPPER_DATA_DIR="${LOPPER_DATA_DIR:-$(cd .. && pwd)/shared/data}"
what="${1:-all}"
threads="${BENCH_THREADS:-2}"
mkdir -p bench/runs
cargo build --release --quiet --bin lopper --example bench_step --example latency_fit --example speedup --example width_sweep
lopper="${LOPPER:-target/release/lopper}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; date: $(date -u +%F)"

throughput() {
  # Per model: lopper's kernels against Burn's own ops (alternating in one process), then lopper
  # against PyTorch (the same network from bench/torch_zoo.py), alternating ROUNDS times.
  local ours theirs m steps
  for m in ${MODELS:-resnet20 mobilenet_v2 vgg11}; do
    steps="${STEPS:-$([ "$m" = resnet20 ] && echo 20 || echo 10)}"
    echo "## $m training step, batch 128, $threads threads"
    RAYON_NUM_THREADS=$threads target/release/examples/bench_step --model "$m" --batch 128 --steps "$steps" --kernels both --reps 0 | grep -E '^\{|^Side by side'
    if [ ! -x bench/.venv/bin/python ]; then
      echo "(no bench/.venv: PyTorch skipped)"
      continue
    fi
    echo
    echo "| round | lopper, images/s | PyTorch, images/s | lopper / PyTorch |"
    echo "|---|---|---|---|"
    for r in $(seq "${ROUNDS:-2}"); do
      ours=$(RAYON_NUM_THREADS=$threads target/release/examples/bench_step --model "$m" --batch 128 --steps "$steps" --kernels on --reps 0 | head -1)
      theirs=$(bench/.venv/bin/python bench/pytorch_resnet20.py --model "$m" --batch 128 --steps "$steps" --threads "$threads")
      python3 - "$r" "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| {sys.argv[1]} | {a['images_per_sec']:.1f} | {b['images_per_sec']:.1f} | {a['images_per_sec'] / b['images_per_sec']:.2f} |")
PY
    done
    echo "(PyTorch: $(bench/.venv/bin/python -c 'import torch; print(torch.__version__)'))"
  done
  echo "## resnet20 step profile (lopper's kernels)"
  RAYON_NUM_THREADS=$threads target/release/examples/bench_step --model resnet20 --batch 128 --steps "${STEPS:-20}" --kernels on --reps 2 | tail -n +2
}

# One full CIFAR-10 training epoch of resnet20, lopper then PyTorch (bench/torch_train_epoch.py:
# the same network, data, augmentation and recipe), each with evaluation on the test set.
epoch() {
  local archive="$LOPPER_DATA_DIR/cifar10-jpg.tar.gz"
  echo "## one resnet20 epoch on CIFAR-10, $threads threads"
  rm -rf bench/runs/epoch-resnet20
  # Peak resident memory of each (GNU time's %M, in KiB) where /usr/bin/time exists.
  local rss=()
  [ -x /usr/bin/time ] && rss=(/usr/bin/time -f "peak RSS %M KiB" -o bench/runs/epoch-rss)
  RAYON_NUM_THREADS=$threads "${rss[@]}" "$lopper" train --model resnet20 --dataset cifar10 --epochs 1 --batch-size 128 --lr 0.1 --warmup-epochs 0.3 --schedule cosine --weight-decay 5e-4 --quiet --out bench/runs/epoch-resnet20 > /dev/null
  echo "lopper:  $(cat bench/runs/epoch-resnet20/metrics.jsonl) $(cat bench/runs/epoch-rss 2>/dev/null)"
  if [ -x bench/.venv/bin/python ]; then
    echo "pytorch: $("${rss[@]}" bench/.venv/bin/python bench/torch_train_epoch.py --data "$archive" --epochs 1 --threads "$threads") $(cat bench/runs/epoch-rss 2>/dev/null)"
  else
    echo "(no bench/.venv: PyTorch skipped)"
  fi
}

train_bench() { # name, then lopper train flags
  local name=$1; shift
  rm -rf "bench/runs/$name"
  local t0=$(date +%s)
  "$lopper" train --out "bench/runs/$name" --quiet "$@"
  local t1=$(date +%s)
  python3 - "bench/runs/$name" "$((t1 - t0))" "$*" <<'PY'
import json, sys
run, secs, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = json.load(open(f"{run}/eval.json"))
print(f"\n| run | flags | test top-1 | test top-5 | wall time |\n|---|---|---|---|---|")
print(f"| {run} | `{flags}` | {100*m['top1']:.2f}% | {100*m['top5']:.2f}% | {secs // 60} min {secs % 60} s |")
PY
}

# Prune the dense resnet20 run to macs=0.5 with lopper, FT_EPOCHS of fine-tuning each.
prune_lopper() {
  local dense=bench/runs/resnet20-cifar10 ft="${FT_EPOCHS:-2}"
  [ -f "$dense/model.safetensors" ] || { echo "no $dense: run bench/run.sh resnet20 first" >&2; exit 1; }
  for m in "l1 uniform" "taylor global"; do
    set -- $m
    rm -rf "bench/runs/prune-$1-$2"
    RAYON_NUM_THREADS=$threads "$lopper" prune --run "$dense" --method "$1" --allocation "$2" \
      --budget macs=0.5 --finetune-epochs "$ft" --lr 0.01 --out "bench/runs/prune-$1-$2" --quiet
  done
}

prune_torch() {
  local ft="${FT_EPOCHS:-2}"
  for m in "l1 uniform" "taylor global"; do
    set -- $m
    bench/.venv/bin/python bench/torch_pruning_resnet20.py --weights bench/runs/resnet20-cifar10/model.safetensors \
      --data "$LOPPER_DATA_DIR/cifar10-jpg.tar.gz" --method "$1" --allocation "$2" --macs 0.5 \
      --finetune-epochs "$ft" --lr 0.01 --threads "$threads" > "bench/runs/torch-prune-$1-$2.json"
  done
}

prune_table() {
  python3 - <<'PY'
import json, os
rows = []
for tool, path in [("lopper", "bench/runs/prune-{}-{}/prune_report.json"), ("Torch-Pruning", "bench/runs/torch-prune-{}-{}.json")]:
    for m, a in [("l1", "uniform"), ("taylor", "global")]:
        p = path.format(m, a)
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        l1, l64 = r["latency_ms_batch1"], r["latency_ms_batch64"]
        rows.append(f"| {tool} | {m}/{a} | {r['macs']['after']/r['macs']['before']:.3f} | {r['params']['after']/r['params']['before']:.3f} "
                    f"| {100*r['top1_dense']:.2f}% | {100*r['top1_pruned']:.2f}% | {100*r['top1_finetuned']:.2f}% "
                    f"| {l1['before']/l1['after']:.2f}x | {l64['before']/l64['after']:.2f}x | {r['seconds']/60:.1f} min |")
print("| tool | importance/allocation | MACs after/before | params after/before | top-1 dense | top-1 pruned | top-1 fine-tuned | speed-up b1 | speed-up b64 | wall time |")
print("|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
  if [ -d bench/runs/prune-l1-uniform ] && [ -d bench/runs/prune-taylor-global ]; then
    echo; echo "lopper speed-ups re-measured alone (dense and pruned interleaved, median of 5 rounds):"; echo
    RAYON_NUM_THREADS=$threads target/release/examples/speedup --dense bench/runs/resnet20-cifar10 \
      --pruned bench/runs/prune-l1-uniform,bench/runs/prune-taylor-global
  fi
}

# lenet5 on MNIST from the dense run of `lenet5` (bench b): every pipeline gets FT_EPOCHS of
# final fine-tuning; DSA allocates for DSA_EPOCHS.
# DSA vs iterative vs one-shot taylor/global from one dense run, at each of BUDGETS (MACs
# fractions), each with the same final fine-tune. The iterative baseline runs with its default
# brief steps and with ITER_LONG step batches; DSA once per entry of DSA_EPOCHS. ROWS picks
# rows by name (taylor, iterative, iterative-300, dsa-2, ...; default all).
# dsa_compare TAG DENSE_RUN SCRATCH_MODEL
dsa_compare() {
  local tag=$1 dense=$2 model=$3 ft="${FT_EPOCHS:-2}" long="${ITER_LONG:-300}"
  [ -f "$dense/model.safetensors" ] || { echo "no $dense: train the dense run first" >&2; exit 1; }
  local specs=("taylor:--method taylor --allocation global" "iterative:--method iterative"
               "iterative-$long:--method iterative --step-batches $long")
  local de
  for de in ${DSA_EPOCHS:-2}; do specs+=("dsa-$de:--method dsa --dsa-epochs $de"); done
  local rows=() budget m
  for budget in ${BUDGETS:-0.5 0.3}; do
    for m in "${specs[@]}"; do
      case " ${ROWS:-all} " in " all "|*" ${m%%:*} "*) ;; *) continue ;; esac
      local name="$tag-$budget-${m%%:*}"
      rm -rf "bench/runs/$name"
      RAYON_NUM_THREADS=$threads "$lopper" prune --run "$dense" ${m#*:} --budget "macs=$budget" \
        --finetune-epochs "$ft" --lr 0.01 --out "bench/runs/$name" --quiet
      rows+=("$name")
    done
  done
  if [ "${SCRATCH:-1}" = 1 ]; then
    # From scratch, at the dense pipeline's total epochs: dense training + DSA + fine-tune.
    local dense_epochs; dense_epochs=$(wc -l < "$dense/metrics.jsonl")
    local de0="${DSA_EPOCHS:-2}"; de0="${de0%% *}"
    local name="$tag-0.3-dsa-scratch"
    rm -rf "bench/runs/$name"
    RAYON_NUM_THREADS=$threads "$lopper" prune --from-scratch --model "$model" --method dsa --budget macs=0.3 \
      --dsa-epochs "$(python3 -c "print($de0 + $dense_epochs)")" --dsa-lr "${SCRATCH_LR:-0.05}" \
      --finetune-epochs "$ft" --lr 0.01 --out "bench/runs/$name" --quiet
    rows+=("$name")
  fi
  python3 bench/dsa_table.py "$dense" "${rows[@]}"
}

# Latency budgets end to end: each method prunes to a latency budget with a profile from
# `lopper profile`, without fine-tuning; the table compares the measured latency of the result
# (as `lopper prune` measured it, and again in its report) with the budget.
latency_budgets() {
  local r20=bench/runs/resnet20-cifar10 l5=bench/runs/lenet5-mnist rows=()
  [ -f bench/runs/resnet20-b1.profile.json ] || RAYON_NUM_THREADS=$threads "$lopper" profile --run $r20 --batch 1 --out bench/runs/resnet20-b1.profile.json
  [ -f bench/runs/lenet5-b64.profile.json ] || RAYON_NUM_THREADS=$threads "$lopper" profile --run $l5 --batch 64 --out bench/runs/lenet5-b64.profile.json
  local spec
  for spec in "resnet20-b1:$r20:0.6:--method l1 --allocation global" "resnet20-b1:$r20:0.4:--method l1 --allocation global" \
              "resnet20-b1:$r20:0.6:--method iterative --criterion l1 --step-batches 20" \
              "lenet5-b64:$l5:0.5:--method taylor --allocation global" "lenet5-b64:$l5:0.5:--method iterative" \
              "lenet5-b64:$l5:0.5:--method dsa --dsa-epochs 1"; do
    IFS=: read -r prof run frac args <<< "$spec"
    local name; name="lat-$prof-$frac-$(echo "$args" | awk '{print $2}')"
    rm -rf "bench/runs/$name"
    RAYON_NUM_THREADS=$threads "$lopper" prune --run "$run" $args --budget "latency=$frac" \
      --profile "bench/runs/$prof.profile.json" --out "bench/runs/$name" > /dev/null 2> "bench/runs/$name.log" || true
    rows+=("$name")
  done
  python3 - "${rows[@]}" <<'PY'
import json, sys
print("| run | method | budget | limit (ms) | measured by prune (ms) | measured / budget | report's re-measurement: pruned / dense (over the budget's share) |")
print("|---|---|---|---|---|---|---|")
for run in sys.argv[1:]:
    try:
        r = json.load(open(f"bench/runs/{run}/prune_report.json"))
    except OSError:
        print(f"| {run} | failed: see bench/runs/{run}.log | | | | | |"); continue
    batch = 1 if "-b1-" in run else 64
    lat = r[f"latency_ms_batch{batch}"]
    share = lat["after"] / lat["before"]
    frac = float(r["budget"].split("=")[1])
    print(f"| {run} | {r['method']} / {r['allocation']} | {r['budget']} | {r['budget_limit']:.3f} | {r['budget_cost']:.3f} "
          f"| {r['budget_cost']/r['budget_limit']:.2f} | {share:.3f} ({share/frac:.2f}) |")
PY
}

case "$what" in
  throughput) throughput ;;
  lenet5) echo "## b. lenet5 on MNIST"; train_bench lenet5-mnist --model lenet5 --dataset mnist --epochs 2 --batch-size 64 --lr 0.05 --schedule cosine ;;
  resnet20) echo "## c. resnet20 on CIFAR-10 (dense baseline)"; train_bench resnet20-cifar10 --model resnet20 --dataset cifar10 --epochs "${EPOCHS:-4}" --batch-size 128 --lr 0.1 --warmup-epochs 0.3 --schedule cosine --weight-decay 5e-4 ;;
  latency) echo "## latency model fit (CPU)"
    for spec in "resnet20 1 0.3" "resnet20 1 0.05" "resnet20 64 0.3" "lenet5 64 0.3" "lenet5 64 0.05"; do
      set -- $spec
      RAYON_NUM_THREADS=$threads target/release/examples/latency_fit --model $1 --batch $2 --min-keep $3 --variants 10 --reps "${REPS:-30}"; echo
    done ;;
  prune) echo "## d. resnet20 pruned to macs=0.5, ${FT_EPOCHS:-2} fine-tune epochs"
    prune_lopper; if [ -x bench/.venv/bin/python ]; then prune_torch; fi; prune_table ;;
  dsa-lenet5) echo "## e. DSA vs iterative vs one-shot, lenet5 on MNIST"
    [ -f bench/runs/lenet5-mnist/model.safetensors ] || "$0" lenet5 > /dev/null
    dsa_compare lenet5 bench/runs/lenet5-mnist lenet5 ;;
  dsa-resnet20) echo "## e. DSA vs iterative vs one-shot, resnet20 on CIFAR-10"
    SCRATCH="${SCRATCH:-0}" dsa_compare resnet20 bench/runs/resnet20-cifar10 resnet20 ;;
  latency-budgets) echo "## f. latency budgets end to end"; latency_budgets ;;
  prune-lopper) prune_lopper; prune_table ;;
  prune-torch) prune_torch; prune_table ;;
  epoch) epoch ;;
  all) "$0" throughput; "$0" lenet5; "$0" resnet20; "$0" latency; "$0" prune; "$0" dsa-lenet5 ;;
  *) echo "usage: bench/run.sh throughput|epoch|lenet5|resnet20|latency|prune|dsa-lenet5|dsa-resnet20|latency-budgets|all" >&2; exit 2 ;;
esac
