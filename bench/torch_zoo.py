"""lopper's zoo CIFAR models as torch modules, for the peer scripts (not part of lopper).

`build(name)` gives resnet20 (torch_resnet20.py), mobilenet_v2 or vgg11, each the network
lopper's `zoo::build(name, [3, 32, 32], 10)` builds: the same layers, widths, strides and
activations, so a training step does the same arithmetic in both.
"""
import torch.nn as nn
import torch.nn.functional as F

from torch_resnet20 import ResNet20


def conv_bn(cin, cout, k, stride, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, t, stride):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers += [conv_bn(cin, hidden, 1, 1), nn.ReLU6()]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), conv_bn(hidden, cout, 1, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return y + x if self.residual else y


class MobileNetV2(nn.Module):
    """CIFAR MobileNet-v2 as in lopper's zoo: stride-1 stem, ReLU6, 1x1 head to 1280, dropout 0.2."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes=10):
        super().__init__()
        layers = [conv_bn(3, 32, 3, 1), nn.ReLU6()]
        c = 32
        for t, out, n, s in self.CFG:
            for k in range(n):
                layers.append(InvertedResidual(c, out, t, s if k == 0 else 1))
                c = out
        layers += [conv_bn(c, 1280, 1, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(F.dropout(x, 0.2, self.training))


class VGG11(nn.Module):
    """CIFAR VGG-11 with BatchNorm as in lopper's zoo: 3x3 conv + BN + ReLU, 2x2 max pools, one linear."""

    CFG = [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0]

    def __init__(self, classes=10):
        super().__init__()
        layers, c = [], 3
        for w in self.CFG:
            if w == 0:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [conv_bn(c, w, 3, 1), nn.ReLU()]
                c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def build(name, classes=10):
    return {"resnet20": ResNet20, "mobilenet_v2": MobileNetV2, "vgg11": VGG11}[name](classes)
