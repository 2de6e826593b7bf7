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

__all__ = ["AGGREGATES", "AGGREGATE_FILE_NAMES", "AGGREGATE_TITLES", "PairMoments",
           "RunningMoments", "SampleStats"]

AGGREGATES = ("mean", "abs", "square", "var")
"""mean: SmoothGrad; abs: mean of |M|; square: SmoothGrad² (mean of M²); var: VarGrad."""

AGGREGATE_TITLES = {"mean": "SmoothGrad", "abs": "SmoothGrad |·|", "square": "SmoothGrad²",
                    "var": "VarGrad"}
"""Each aggregate's name as figures, tables and pages show it."""

AGGREGATE_FILE_NAMES = {"mean": "smoothgrad", "abs": "abs", "square": "square",
                        "var": "vargrad"}
"""Each aggregate's name in output file names (``cat_gradient_square.npy``)."""


def _stats_dtype(device: torch.device | str) -> torch.dtype:
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _unknown(name: str) -> ValueError:
    return ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {name!r}")


class RunningMoments:
    """Mean, mean |M| and central moments 2–4 of a stream of tensors shaped `shape`.

    Each `update` takes a chunk `(s, *shape)` of new samples and merges its own moments into
    the running ones with the pairwise formulas of Chan et al. and Pébay (2008), so the result
    does not depend on how the stream was chunked (up to float rounding). Statistics are kept
    in float64 (float32 on MPS, which has no float64).
    """

    def __init__(self, shape: Sequence[int], *, device: torch.device | str = "cpu",
                 fourth: bool = True) -> None:
        dtype = _stats_dtype(device)
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
        raise _unknown(name)

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
            raise _unknown(name)
        return (spread / n).sqrt()


class PairMoments:
    """Standard errors over antithetic pairs (ε, −ε): each pair's average is one sample.

    The two maps of a pair are strongly correlated (negatively for the mean of a nearly
    linear model), so treating them as independent gave standard errors 20× too large for
    the mean and 0.6× too small for VarGrad. Here the pair averages of M, |M| and M² are
    the independent samples; VarGrad's error follows by the delta method from the pair
    averages of M and M² and their covariance. Samples arrive in index order, in chunks
    that may split a pair; an unpaired last sample is left out of the errors.
    """

    def __init__(self, shape: Sequence[int], *, device: torch.device | str = "cpu") -> None:
        dtype = _stats_dtype(device)
        self.pairs = 0
        self.mean = torch.zeros((3, *shape), dtype=dtype, device=device)  # M, |M|, M²
        self.m2 = torch.zeros_like(self.mean)
        self.co = torch.zeros(tuple(shape), dtype=dtype, device=device)  # of M and M²
        self.pending: Tensor | None = None

    def update(self, chunk: Tensor, first: int) -> None:
        """Add samples `first, first + 1, …` (pairs start at even indices)."""
        values = chunk.to(self.mean.dtype)
        if first % 2:
            if self.pending is None:
                raise ValueError("antithetic samples must arrive in order")
            values = torch.cat([self.pending[None], values])
        self.pending = values[-1].clone() if values.shape[0] % 2 else None
        values = values[: values.shape[0] // 2 * 2]
        if values.shape[0] == 0:
            return
        halves = values.view(-1, 2, *values.shape[1:])
        features = torch.stack([halves.mean(1), halves.abs().mean(1), halves.square().mean(1)],
                               dim=1)
        nb = features.shape[0]
        na, n = self.pairs, self.pairs + nb
        mean_b = features.mean(dim=0)
        centred = features - mean_b
        delta = mean_b - self.mean
        self.co = (self.co + (centred[:, 0] * centred[:, 2]).sum(dim=0)
                   + delta[0] * delta[2] * (na * nb / n))
        self.m2 = self.m2 + centred.square().sum(dim=0) + delta.square() * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.pairs = n

    def stderr(self, name: str, samples: int) -> Tensor:
        """Standard error of aggregate `name` over `samples` samples (inf under two pairs)."""
        m = self.pairs
        if m < 2:
            return torch.full_like(self.co, math.inf)
        variance = self.m2 / (m - 1)
        index = {"mean": 0, "abs": 1, "square": 2}.get(name)
        if index is not None:
            return (variance[index] / m).sqrt()
        if name != "var":
            raise _unknown(name)
        b = self.mean[0]
        k = samples / (samples - 1)
        spread = variance[2] - 4 * b * self.co / (m - 1) + 4 * b.square() * variance[0]
        return (k * k * spread.clamp(min=0) / m).sqrt()


class SampleStats:
    """Everything kept about one stream of maps: each aggregate and its standard error.

    `fourth` moments are kept only when needed (square or var among `aggregates`), and pair
    statistics only for antithetic noise.
    """

    def __init__(self, shape: Sequence[int], aggregates: Sequence[str], *,
                 antithetic: bool = False, device: torch.device | str = "cpu") -> None:
        plain_errors = not antithetic and bool({"square", "var"} & set(aggregates))
        self.moments = RunningMoments(shape, device=device, fourth=plain_errors)
        self.pairs = PairMoments(shape, device=device) if antithetic else None

    @property
    def count(self) -> int:
        """Samples so far."""
        return self.moments.count

    def update(self, chunk: Tensor) -> None:
        """Merge the next samples, in index order."""
        if self.pairs is not None:
            self.pairs.update(chunk, self.moments.count)
        self.moments.update(chunk)

    def aggregate(self, name: str) -> Tensor:
        """The aggregated map `name`."""
        return self.moments.aggregate(name)

    def stderr(self, name: str) -> Tensor:
        """Its standard error (over antithetic pairs when the noise came in pairs)."""
        if self.pairs is not None:
            return self.pairs.stderr(name, self.moments.count)
        return self.moments.stderr(name)
