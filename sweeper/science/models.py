"""Model zoo: every model takes images in [0,1] and normalises inside (torch only).

``forward(x) = head(representation(x))``; ``representation(x)`` normalises with the model's ``mean``/``std``
buffers and returns the penultimate features, shape (N, F).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["SweeperModel", "Probe", "build", "probe", "available", "registry"]


class SweeperModel(nn.Module):
    """Common base: normalisation buffers + ``features`` (penultimate) + ``head`` (linear)."""

    def __init__(self, features: nn.Module, head: nn.Module, *, in_shape, mean, std, feature_dim: int):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        shape = (1, -1) + (1,) * (len(in_shape) - 1)
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        self.in_shape = in_shape
        self.feature_dim = int(feature_dim)
        self.features = features
        self.head = head

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.representation(x))


class Probe(nn.Module):
    """A linear probe: ``forward(x) = head(extractor.representation(x))``, the extractor frozen.

    What sweeper calls "robust features" in a probe (a train stage with ``features:``): the penultimate-layer
    activations of the adversarially trained model the stage names, i.e. ``representation(x)``, the very
    representation a D_R synthesis inverts (``synthesis.feature_distance``), with that model's weights and
    batch-norm statistics frozen. A probe trained on D_rand or D_det (with their relabelled targets) and
    scored on the true test labels measures how much of those sets' signal the robust model's features
    still carry: the robust-feature-leakage test of Goh's Distill comment ("Two examples of useful,
    non-robust features"), where D_rand leaked (above chance) and D_det much less.

    How this differs from Goh's construction, as far as we understand it: Goh restricted a *linear*
    classifier to robust *linear* directions of the input (pixel) space; here the features are a nonlinear
    robust model's learned representation, a broader notion of robust feature. It can read more than Goh's
    probe could: a D_det image whose perturbation moves the robust model's features of the target class (a
    targeted attack on a standard model may do that too) leaks through it, so a higher number here than in
    Goh's setting does not by itself contradict his result.

    Frozen means: ``requires_grad`` is off for every extractor parameter (an optimizer over
    ``p for p in parameters() if p.requires_grad`` holds the head's only), and the extractor stays in eval mode
    whatever ``train()`` is called with (no batch-norm statistic updates, no dropout). Gradients still flow
    through it to the input, so attacks on the probe attack the composite image -> features -> head.
    """

    def __init__(self, extractor: nn.Module, num_classes: int):
        super().__init__()
        if not callable(getattr(extractor, "representation", None)) or not hasattr(extractor, "feature_dim"):
            raise TypeError(f"a probe needs a model with representation() and feature_dim (got "
                            f"{type(extractor).__name__})")
        self.extractor = extractor.requires_grad_(False)
        self.head = nn.Linear(int(extractor.feature_dim), int(num_classes))
        self.in_shape = tuple(extractor.in_shape)
        self.feature_dim = int(extractor.feature_dim)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Probe":
        """Only the head follows ``mode``; the extractor is kept in eval mode (``eval()`` calls this too)."""
        self.training = bool(mode)
        self.head.train(mode)
        self.extractor.eval()
        return self

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor.representation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.representation(x))


def probe(extractor: nn.Module, num_classes: int) -> Probe:
    """A :class:`Probe` on ``extractor`` with a fresh head (seed torch beforehand for a reproducible head)."""
    return Probe(extractor, num_classes)


# --------------------------------------------------------------------------------------- small nets
def _cnn(width: int):
    """Three conv-ReLU-maxpool blocks (width, 2x, 4x channels) and a 256-unit hidden layer."""
    def make(num_classes, in_shape):
        c, h, w = in_shape
        for _ in range(3):
            h, w = h // 2, w // 2
        a, b, d = width, 2 * width, 4 * width
        feats = nn.Sequential(
            nn.Conv2d(c, a, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(b, d, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(d * h * w, 256), nn.ReLU(inplace=True),
        )
        return feats, nn.Linear(256, num_classes), 256
    return make


_small_cnn = _cnn(32)


def _mlp(num_classes, in_shape):
    d = math.prod(in_shape)
    feats = nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(inplace=True),
                          nn.Linear(256, 256), nn.ReLU(inplace=True))
    return feats, nn.Linear(256, num_classes), 256


def _linear(num_classes, in_shape):
    d = math.prod(in_shape)
    return nn.Flatten(), nn.Linear(d, num_classes), d


# ------------------------------------------------------------------------------------------ ResNets
class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _resnet(block, layers, widths=(64, 128, 256, 512)):
    def make(num_classes, in_shape):
        cin = widths[0]
        mods = [nn.Conv2d(in_shape[0], cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        for i, (planes, n) in enumerate(zip(widths, layers)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                mods.append(block(cin, planes, stride))
                cin = planes * block.expansion
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*mods), nn.Linear(cin, num_classes), cin
    return make


# --------------------------------------------------------------------------------------------- VGG
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16(num_classes, in_shape):
    mods, cin = [], in_shape[0]
    for v in _VGG16:
        if v == "M":
            mods.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28x28 inputs still reach 1x1
        else:
            mods += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*mods), nn.Linear(512, num_classes), 512


# ---------------------------------------------------------------------------------------- DenseNet
class _DenseFeatures(nn.Module):
    def __init__(self, features: nn.Module):
        super().__init__()
        self.body = features

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.body(x)), 1), 1)


def _densenet121(num_classes, in_shape):
    from torchvision.models import densenet121

    net = densenet121(weights=None, num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)  # CIFAR stem
    net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    return _DenseFeatures(net.features), net.classifier, dim


# ---------------------------------------------------------------------------------------- airbench
def _conv_bn(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


def _airbench(num_classes, in_shape):
    """Compact airbench-style net (Keller Jordan's fast CIFAR-10 trainer): conv stem 24, then three blocks
    conv-pool-BN-GELU, conv-BN-GELU at widths 64/256/256, global max pool."""
    mods = [nn.Conv2d(in_shape[0], 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.GELU()]
    cin = 24
    for w in (64, 256, 256):
        mods += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(w), nn.GELU()]
        mods += _conv_bn(w, w)
        cin = w
    mods += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*mods), nn.Linear(256, num_classes, bias=False), 256


registry: dict[str, Callable] = {
    "small_cnn": _small_cnn,
    "wide_cnn": _cnn(64),                                          # small_cnn with twice the channels
    "resnet_small": _resnet(_BasicBlock, (1, 1, 1), (16, 32, 64)),  # a ResNet-8 for 28x28 inputs on a CPU
    "mlp": _mlp,
    "linear": _linear,
    "resnet18": _resnet(_BasicBlock, (2, 2, 2, 2)),
    "resnet50": _resnet(_Bottleneck, (3, 4, 6, 3)),
    "vgg16": _vgg16,
    "densenet121": _densenet121,
    "airbench": _airbench,
}
_IMAGE_ONLY = {"small_cnn", "wide_cnn", "resnet_small", "resnet18", "resnet50", "vgg16", "densenet121", "airbench"}


def available() -> list[str]:
    return list(registry)


def build(arch: str, *, num_classes: int, in_shape: tuple[int, ...], mean, std) -> nn.Module:
    """A fresh model (seed torch beforehand for reproducible init). Inputs in [0,1]; normalises inside."""
    if arch not in registry:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(available())}")
    in_shape = tuple(int(s) for s in in_shape)
    if arch in _IMAGE_ONLY and len(in_shape) != 3:
        raise ValueError(f"arch {arch!r} needs image inputs (C,H,W), got in_shape={in_shape}")
    features, head, dim = registry[arch](int(num_classes), in_shape)
    return SweeperModel(features, head, in_shape=in_shape, mean=mean, std=std, feature_dim=dim)
