"""Small seeded models shared by the tests, and the command line called in process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReusedReluCNN(nn.Module):
    """One in-place nn.ReLU module used three times, like torchvision's ResNet blocks."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = F.avg_pool2d(self.relu(self.conv2(x)), 2)
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


class ActivationCNN(nn.Module):
    """A CNN whose nonlinearity is any callable (module or function), for twin models."""

    def __init__(self, act: Callable[[Tensor], Tensor], classes: int = 5) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.fc(x.flatten(1))


class SeparateReluCNN(nn.Module):
    """Each ReLU its own module (what Captum's DeepLift needs), with average pooling."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(),
                                  nn.Linear(12, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise `model` from `seed` (biases too, so ReLUs are mixed) and put it in eval."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def images(n: int = 2, seed: int = 1, size: int = 8) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def cnn() -> nn.Module:
    return seeded(ReusedReluCNN())


@pytest.fixture
def x() -> Tensor:
    return images()


TINY_MODEL = '''
import numpy as np, torch
from torch import nn

def build():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model, squash

def squash(image):  # the whole photo squashed to 24 high x 12 wide, values in [0, 1]
    a = np.asarray(image.resize((12, 24)), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)
'''
"""A `--model file.py` (build: a seeded 5-class CNN and its preprocessing), as its text."""


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`smoothgrad ARGS` in this process: (exit code, what it wrote on stderr)."""
    from smoothgrad.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err
