"""Peer reference: issue 3's pruning benchmark done with PyTorch and Torch-Pruning.

Not part of lopper: run by `bench/run.sh prune` in bench/.venv (`pip install torch torchvision
torch-pruning`). It starts from the same dense weights as lopper (lopper's model.safetensors,
read here without extra packages), the same CIFAR-10 JPEG archive, the same preprocessing and
augmentation, prunes resnet20 to the same MACs fraction (MACs of convolutions and linear layers
only, as lopper counts them), fine-tunes for the same epochs with the same recipe, and prints
one JSON object shaped like lopper's prune_report.json.

  --method l1 --allocation uniform   GroupMagnitudeImportance(p=1), one ratio for every layer
  --method taylor --allocation global GroupTaylorImportance, global ranking
The channel ratio is found by bisection so that the pruned MACs are at most the budget.
"""
import argparse
import copy
import io
import json
import os
import struct
import tarfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from PIL import Image

from torch_resnet20 import ResNet20

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", f"{name}: {meta['dtype']}"
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"]).copy())
    return out


def load_lopper(model, path):
    tensors = read_safetensors(path)
    tensors["fc.weight"] = tensors["fc.weight"].t().contiguous()  # lopper stores linear as [in, out]
    state = model.state_dict()
    for k in state:
        if k.endswith("num_batches_tracked"):
            continue
        state[k] = tensors[k]
    model.load_state_dict(state)


def load_cifar(archive, cache):
    if os.path.exists(cache):
        z = np.load(cache)
        return (z["xtr"], z["ytr"]), (z["xte"], z["yte"])
    split = {"train": ([], []), "test": ([], [])}
    with tarfile.open(archive) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name):
            parts = m.name.split("/")
            s, cls = parts[-3], parts[-2]
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            split[s][0].append(np.asarray(img, dtype=np.uint8))
            split[s][1].append(CLASSES.index(cls))
    xtr, ytr = np.stack(split["train"][0]), np.array(split["train"][1], dtype=np.int64)
    xte, yte = np.stack(split["test"][0]), np.array(split["test"][1], dtype=np.int64)
    np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return (xtr, ytr), (xte, yte)


def to_tensor(x):
    """NHWC uint8 images to normalised NCHW floats."""
    return torch.from_numpy(((x.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def augment(x, rng):
    # Random crop after 4 pixels of black padding (as lopper and torchvision pad) and flip.
    n = x.shape[0]
    p = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    dx, dy = rng.integers(0, 9, n), rng.integers(0, 9, n)
    flip = rng.random(n) < 0.5
    out = np.empty_like(x)
    for i in range(n):
        c = p[i, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        out[i] = c[:, ::-1] if flip[i] else c
    return out


def evaluate(model, x, y, bs=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def macs_params(model):
    """MACs of convolutions and linear layers (per image) and all parameters, as lopper counts."""
    macs = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hs:
        h.remove()
    return macs[0], sum(p.numel() for p in model.parameters())


def latency_ms(model, batch, reps=10):
    model.eval()
    x = torch.randn(batch, 3, 32, 32)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def prune_copy(model, method, allocation, ratio):
    m = copy.deepcopy(model)
    for p_new, p_old in zip(m.parameters(), model.parameters()):
        p_new.grad = None if p_old.grad is None else p_old.grad.clone()
    imp = tp.importance.GroupMagnitudeImportance(p=1) if method == "l1" else tp.importance.GroupTaylorImportance()
    pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 3, 32, 32), importance=imp, pruning_ratio=ratio,
                                  global_pruning=allocation == "global", max_pruning_ratio=0.95,
                                  ignored_layers=[m.fc])
    pruner.step()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", choices=["l1", "taylor"], required=True)
    ap.add_argument("--allocation", choices=["uniform", "global"], required=True)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--taylor-batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    started = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cache = os.path.join(os.path.dirname(os.path.abspath(a.weights)), "..", "cifar10-cache.npz")
    (xtr, ytr), (xte, yte) = load_cifar(a.data, cache)
    xte = to_tensor(xte)
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)

    dense = ResNet20()
    load_lopper(dense, a.weights)
    top1_dense = evaluate(dense, xte, yte_t)
    dense_macs, dense_params = macs_params(dense)

    if a.method == "taylor":
        # Accumulate dL/dw over training batches (the criterion reads .grad).
        dense.train()
        dense.zero_grad()
        order = rng.permutation(len(xtr))
        for i in range(a.taylor_batches):
            idx = order[i * a.batch:(i + 1) * a.batch]
            F.cross_entropy(dense(to_tensor(xtr[idx])), ytr_t[idx]).backward()
        dense.eval()

    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        if macs_params(prune_copy(dense, a.method, a.allocation, mid))[0] <= a.macs * dense_macs:
            hi = mid
        else:
            lo = mid
    pruned = prune_copy(dense, a.method, a.allocation, hi)
    for p in pruned.parameters():
        p.grad = None
    dense.zero_grad(set_to_none=True)
    macs, params = macs_params(pruned)
    top1_pruned = evaluate(pruned, xte, yte_t)

    opt = torch.optim.SGD(pruned.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(xtr) // a.batch
    total = steps_per_epoch * a.finetune_epochs
    step = 0
    for epoch in range(a.finetune_epochs):
        pruned.train()
        order = rng.permutation(len(xtr))
        for i in range(steps_per_epoch):
            for g in opt.param_groups:
                g["lr"] = 0.5 * a.lr * (1 + np.cos(np.pi * step / total))
            idx = order[i * a.batch:(i + 1) * a.batch]
            x = to_tensor(augment(xtr[idx], rng))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(pruned(x), ytr_t[idx]).backward()
            opt.step()
            step += 1
    top1_ft = evaluate(pruned, xte, yte_t) if a.finetune_epochs else None

    print(json.dumps({
        "tool": f"torch-pruning {tp.__version__} / pytorch {torch.__version__} cpu",
        "model": "resnet20", "method": a.method, "allocation": a.allocation, "budget": f"macs={a.macs}",
        "channel_ratio": hi,
        "macs": {"before": dense_macs, "after": macs}, "params": {"before": dense_params, "after": params},
        "top1_dense": top1_dense, "top1_pruned": top1_pruned, "top1_finetuned": top1_ft,
        "finetune_epochs": a.finetune_epochs,
        "latency_ms_batch1": {"before": latency_ms(dense, 1), "after": latency_ms(pruned, 1)},
        "latency_ms_batch64": {"before": latency_ms(dense, 64), "after": latency_ms(pruned, 64)},
        "seconds": time.time() - started,
    }))


if __name__ == "__main__":
    main()
