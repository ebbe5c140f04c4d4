"""The DSA comparison table (bench/run.sh dsa-lenet5 | dsa-resnet20) from the runs' reports.

usage: python3 bench/dsa_table.py DENSE_RUN RUN...   (RUN: a folder name under bench/runs, or
a path to a prune run's folder)
"""
import json
import os
import sys

dense = sys.argv[1]
m = [json.loads(l) for l in open(f"{dense}/metrics.jsonl")]
dense_secs = sum(e["seconds"] for e in m)
print(f"dense {dense}: {len(m)} epochs, {dense_secs:.0f} s of training (in the last column of "
      "every pipeline except the one from scratch)\n")
print("| pipeline | budget | MACs after/before (pruned graph) | top-1 pruned | top-1 fine-tuned "
      "| widths s | fine-tune s | prune total s | total s incl. dense |")
print("|---|---|---|---|---|---|---|---|---|")
for run in sys.argv[2:]:
    folder = run if os.path.isdir(run) else f"bench/runs/{run}"
    r = json.load(open(f"{folder}/prune_report.json"))
    scratch = r.get("from_scratch", False)
    # The flags the run was given (fractions included), from its saved command.
    cmd = json.load(open(f"{folder}/prune_command.json"))["args"]
    flag = lambda name, default: cmd[cmd.index(name) + 1] if name in cmd else default
    if r["method"] == "dsa":
        label = f"DSA{' from scratch' if scratch else ''}, {flag('--dsa-epochs', '3')} allocation epochs"
        if "--admm-metric" in cmd:
            label += f", {flag('--admm-metric', '')} ADMM metric"
        if "--dsa-schedule" in cmd:
            label += f", {flag('--dsa-schedule', '')} lr"
        if "--hard-tail" in cmd:
            label += f", hard tail {flag('--hard-tail', '')}"
        if "--fisher-decay" in cmd:
            label += f", Fisher decay {flag('--fisher-decay', '')}"
        if "--rho" in cmd:
            label += f", rho {flag('--rho', '')}"
        if "--channel-rank" in cmd:
            label += f", {flag('--channel-rank', '')} channel rank"
    elif r["method"] == "iterative":
        label = f"{r['allocation']}, {flag('--step-batches', '100')} batches per step"
    else:
        label = f"{r['method']} / {r['allocation']}"
    if "--seed" in cmd:
        label += f", seed {flag('--seed', '')}"
    total = r["seconds"] + (0 if scratch else dense_secs)
    print(f"| {label} | {r['budget']} | {r['macs']['after'] / r['macs']['before']:.3f} "
          f"(met: {r['budget_met']}) | {100 * r['top1_pruned']:.2f}% | {100 * (r['top1_finetuned'] or 0):.2f}% "
          f"| {r['allocation_seconds']:.0f} | {r['finetune_seconds']:.0f} | {r['seconds']:.0f} | {total:.0f} |")
