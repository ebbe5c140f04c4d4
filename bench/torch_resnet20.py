"""lopper's zoo resnet20 as a torch module, with lopper's parameter names, for the peer scripts.

Not part of lopper. 3 stages of 3 basic blocks, widths 16/32/64, 1x1 conv + BN projection
shortcuts where the shape changes; `stem`, `stageS.blockB.{conv1,bn1,conv2,bn2,shortcut}` and
`fc` match the names in lopper's model.safetensors.
"""
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet20(nn.Module):
    """lopper's zoo resnet20, with the same parameter names."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = ConvBn(3, 16, 3, 1)
        cin = 16
        for s, w in enumerate([16, 32, 64], start=1):
            for b in range(3):
                setattr(self, f"stage{s}", getattr(self, f"stage{s}", nn.Module()))
                setattr(getattr(self, f"stage{s}"), f"block{b}", Block(cin, w, 2 if s > 1 and b == 0 else 1))
                cin = w
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for s in (1, 2, 3):
            for b in range(3):
                x = getattr(getattr(self, f"stage{s}"), f"block{b}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
