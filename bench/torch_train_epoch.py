"""Peer reference: `lopper train --model M --dataset cifar10 --epochs E` done in PyTorch, for the
time of a full training epoch side by side (issue 26). Not part of lopper.

The same network (torch_zoo.py), data (the CIFAR-10 JPEG archive, decoded once and cached),
preprocessing and augmentation (4-pixel pad, random crop, flip), and recipe as lopper's
defaults in bench c: SGD with momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, linear warm-up
over 0.3 epochs then cosine to zero per step; the test set evaluated after every epoch.
Prints one JSON line per epoch: seconds (training and evaluation, like lopper's metrics.jsonl),
training images/s, test top-1.

  bench/.venv/bin/python bench/torch_train_epoch.py --data ../shared/data/cifar10-jpg.tar.gz
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from torch_pruning_resnet20 import augment, evaluate, load_cifar, to_tensor
from torch_zoo import build


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="bench/runs/cifar10.npz")
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenet_v2", "vgg11"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N images (a smoke test)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    (xtr, ytr), (xte, yte) = load_cifar(a.data, a.cache)
    if a.train_limit:
        keep = np.random.default_rng(1).permutation(len(xtr))[:a.train_limit]
        xtr, ytr = xtr[keep], ytr[keep]
    model = build(a.model)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = len(xtr) // a.batch
    total, warm = per_epoch * a.epochs, int(a.warmup_epochs * per_epoch)
    test_x = to_tensor(xte)
    test_y = torch.from_numpy(yte)
    step = 0
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(xtr))
        for b in range(per_epoch):
            idx = order[b * a.batch:(b + 1) * a.batch]
            x = to_tensor(augment(xtr[idx], rng))
            y = torch.from_numpy(ytr[idx])
            lr = a.lr * (step + 1) / warm if step < warm else \
                a.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            step += 1
        train_secs = time.perf_counter() - t0
        top1 = evaluate(model, test_x, test_y)
        secs = time.perf_counter() - t0
        print(json.dumps({"engine": f"pytorch {torch.__version__}", "model": a.model, "epoch": epoch,
                          "threads": a.threads, "seconds": round(secs, 1),
                          "images_per_sec": round(per_epoch * a.batch / train_secs, 1),
                          "train_loss": round(loss.item(), 4), "test_top1": round(float(top1), 4)}), flush=True)


if __name__ == "__main__":
    main()
