"""Peer reference: the same training step in PyTorch (CPU, or CUDA with --device cuda):
ResNet-20 by default, `--model mobilenet_v2|vgg11` for the other zoo models of torch_zoo.py.

Not part of lopper: run by bench/run.sh in a venv with `pip install torch torchvision`.
The network matches lopper's zoo resnet20 (3 stages of 3 basic blocks, widths 16/32/64,
1x1 conv + BN projection shortcuts where the shape changes), trained with SGD (momentum 0.9,
weight decay 5e-4) and cross-entropy, at the same batch size and thread count.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from torch_zoo import build


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenet_v2", "vgg11"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.model).to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = (time.perf_counter() - t) / a.steps
    print(json.dumps({"engine": f"pytorch {torch.__version__} {a.device}", "model": a.model, "params": params,
                      "batch": a.batch, "steps": a.steps, "threads": a.threads,
                      "images_per_sec": round(a.batch / secs, 2), "step_seconds": round(secs, 4)}))


if __name__ == "__main__":
    main()
