"""Running moments over noisy samples, merged chunk by chunk (Welford, Chan and Pébay).

Example:
    >>> import torch
    >>> values = torch.randn(10, 3)
    >>> moments = RunningMoments((3,))
    >>> moments.update(values[:4]); moments.update(values[4:])
    >>> torch.allclose(moments.mean, values.double().mean(0))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AGGREGATES", "RunningMoments"]

AGGREGATES = ("mean", "abs", "square", "var")
"""mean: SmoothGrad; abs: mean of |M|; square: SmoothGrad² (mean of M²); var: VarGrad."""


class RunningMoments:
    """Mean, mean |M| and central moments 2–4 of a stream of tensors shaped `shape`.

    Each `update` takes a chunk `(s, *shape)` of new samples and merges its own moments into
    the running ones with the pairwise formulas of Chan et al. and Pébay (2008), so the result
    does not depend on how the stream was chunked (up to float rounding). Statistics are kept
    in float64 (float32 on MPS, which has no float64).
    """

    def __init__(self, shape: Sequence[int], *, device: torch.device | str = "cpu",
                 fourth: bool = True) -> None:
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.count = 0
        self.fourth = fourth
        self.mean = torch.zeros(tuple(shape), dtype=dtype, device=device)
        self.abs_mean, self.m2 = torch.zeros_like(self.mean), torch.zeros_like(self.mean)
        self.m3, self.m4 = torch.zeros_like(self.mean), torch.zeros_like(self.mean)

    def update(self, chunk: Tensor) -> None:
        """Merge the samples `chunk[0], chunk[1], ...` into the running moments."""
        values = chunk.to(self.mean.dtype, copy=True)  # a copy: centred in place below
        nb = values.shape[0]
        na, n = self.count, self.count + nb
        mean_b = values.mean(dim=0)
        abs_mean_b = values.abs().mean(dim=0)
        centred = values.sub_(mean_b)
        if self.fourth:
            squared = centred.square()
            m2_b = squared.sum(dim=0)
        else:  # in place: each temporary the size of the chunk costs as much as the sum
            m2_b = centred.mul_(centred).sum(dim=0)
        delta = mean_b - self.mean
        if self.fourth:
            m3_b = (squared * centred).sum(dim=0)
            m4_b = squared.square().sum(dim=0)
            self.m4 = (self.m4 + m4_b
                       + delta**4 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
                       + 6 * delta**2 * (na * na * m2_b + nb * nb * self.m2) / n**2
                       + 4 * delta * (na * m3_b - nb * self.m3) / n)
            self.m3 = (self.m3 + m3_b + delta**3 * (na * nb * (na - nb) / n**2)
                       + 3 * delta * (na * m2_b - nb * self.m2) / n)
        self.m2 = self.m2 + m2_b + delta**2 * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.abs_mean = self.abs_mean + (abs_mean_b - self.abs_mean) * (nb / n)
        self.count = n

    def aggregate(self, name: str) -> Tensor:
        """The aggregated attribution; `var` is the unbiased sample variance (divides by n − 1)."""
        n = self.count
        if name == "mean":
            return self.mean
        if name == "abs":
            return self.abs_mean
        if name == "square":
            return self.m2 / n + self.mean.square()
        if name == "var":
            return self.m2 / (n - 1) if n > 1 else torch.zeros_like(self.m2)
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {name!r}")

    def stderr(self, name: str) -> Tensor:
        """Standard error of `aggregate(name)` from the sample moments (inf with one sample)."""
        n = self.count
        if n < 2:
            return torch.full_like(self.mean, math.inf)
        unbias = n / (n - 1)
        if name == "mean":
            spread = self.m2 / n * unbias
        elif name == "abs":
            second_raw = self.m2 / n + self.mean.square()
            spread = (second_raw - self.abs_mean.square()).clamp(min=0) * unbias
        elif name == "square":
            mu2, mu3, mu4, m = self.m2 / n, self.m3 / n, self.m4 / n, self.mean
            fourth_raw = mu4 + 4 * mu3 * m + 6 * mu2 * m.square() + m**4
            spread = (fourth_raw - (mu2 + m.square()).square()).clamp(min=0) * unbias
        elif name == "var":
            variance = self.m2 / (n - 1)
            spread = (self.m4 / n - variance.square() * (n - 3) / (n - 1)).clamp(min=0)
        else:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {name!r}")
        return (spread / n).sqrt()
