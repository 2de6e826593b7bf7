"""How much the map moves when the input (or the explainer's own noise) barely does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from smoothgrad.metrics.base import Explainer, Progress, Score, Target, draw, resolve_target

__all__ = ["SCORES", "max_relative_change", "sensitivity_floor", "sensitivity_max",
           "uniform_perturbations"]

SCORES = (Score("sensitivity_max", "sens", ".3f", "lower"),
          Score("sensitivity_floor", "floor", ".3f"))


def sensitivity_max(explain: Explainer, model: nn.Module, x: Tensor, target: Target = None, *,
                    perturb_radius: float = 0.02, n_perturb_samples: int = 10,
                    generator: torch.Generator | int = 0, perturbations: Tensor | None = None,
                    batch_size: int | None = None, progress: Progress | None = None) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019) of an explainer, per example ``(N,)``.

    ``max_k ||e(x + d_k) - e(x)||_F / ||e(x)||_F`` with ``d_k`` uniform in the L-inf ball of
    ``perturb_radius`` (a zero ``||e(x)||`` divides by 1). The target (default: the clean
    prediction) is the same for every perturbed input. ``perturbations``
    ``(N, n_perturb_samples, *x.shape[1:])`` supplies the ``d_k``; otherwise they come from
    ``generator`` (a seed or a ``torch.Generator``). ``explain`` gets ``batch_size`` perturbed
    inputs per call (default: all of them; Captum's ``max_examples_per_batch``). A seeded
    stochastic explainer (SmoothGrad) reuses its noise for every input; compare with
    :func:`sensitivity_floor` for the part due to fresh noise. ``progress`` gets the number of
    perturbed inputs explained by each call.

    On the same ``d_k`` this equals ``captum.metrics.sensitivity_max(..., norm_ord="fro")``
    and Quantus' ``MaxSensitivity`` (``normalise=False``, ``abs=False``; Quantus divides by a
    zero norm). The parameter names and defaults are Captum's (radius 0.02, 10 samples);
    Quantus draws 200 samples of radius 0.2 (``lower_bound``), so its figures are not
    comparable with ours unless ``perturb_radius=0.2, n_perturb_samples=200``.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> model = torch.nn.Linear(4, 3)
        >>> sensitivity_max(gradient, model, torch.rand(2, 4))  # a linear model's gradient is fixed
        tensor([0., 0.])
    """
    if perturbations is None:
        perturbations = uniform_perturbations(x, n_perturb_samples, perturb_radius, generator)
    elif perturbations.shape[0] != x.shape[0] or perturbations.shape[2:] != x.shape[1:]:
        raise ValueError(f"perturbations must be (N, n_perturb_samples, ...) for x {x.shape}")
    n, k = perturbations.shape[:2]
    target_t = resolve_target(model, x, target)
    reference = explain(model, x, target_t).detach()
    inputs = (x.unsqueeze(1) + perturbations).flatten(0, 1)
    targets = target_t.repeat_interleave(k)
    step = batch_size or n * k
    maps = []
    for i in range(0, n * k, step):
        maps.append(explain(model, inputs[i : i + step], targets[i : i + step]).detach())
        if progress is not None:
            progress(maps[-1].shape[0])
    return max_relative_change(reference, torch.cat(maps).view(n, k, *reference.shape[1:]))


def uniform_perturbations(x: Tensor, n_perturb_samples: int, perturb_radius: float,
                          generator: torch.Generator | int = 0) -> Tensor:
    """``d_k`` uniform in the L-inf ball of ``perturb_radius``,
    ``(N, n_perturb_samples, *x.shape[1:])``."""
    shape = (x.shape[0], n_perturb_samples, *x.shape[1:])
    return perturb_radius * (2 * draw("uniform", shape, generator, x) - 1)


def max_relative_change(reference: Tensor, maps: Tensor) -> Tensor:
    """``max_k ||maps[:, k] - reference|| / ||reference||`` per example, ``(N,)``.

    ``reference`` is ``(N, ...)`` and ``maps`` ``(N, k, ...)``; a zero reference divides by 1.
    """
    n, k = maps.shape[:2]
    flat = reference.reshape(n, 1, -1)
    norm = flat.norm(dim=2)
    norm = torch.where(norm != 0, norm, 1.0)
    distances: Tensor = torch.linalg.vector_norm(maps.reshape(n, k, -1) - flat, dim=2)
    return (distances / norm).amax(dim=1)


def sensitivity_floor(explain: Callable[[nn.Module, Tensor, Tensor, int], Tensor],
                      model: nn.Module, x: Tensor, target: Target = None, *,
                      seeds: Sequence[int] = tuple(range(1, 11)),
                      reference_seed: int = 0) -> Tensor:
    """Noise floor of a stochastic explainer: its max-sensitivity at zero perturbation.

    ``max_s ||e_s(x) - e_ref(x)||_F / ||e_ref(x)||_F`` over ``seeds``, where
    ``explain(model, x, target, seed)`` is the explainer run with that seed (e.g. SmoothGrad)
    and ``e_ref`` uses ``reference_seed``. Ten seeds match :func:`sensitivity_max`'s ten
    perturbations. It is what re-drawing the explainer's noise alone costs: a max-sensitivity
    near this floor is not resolvable from the explainer's own Monte-Carlo error.

    Example:
        >>> import smoothgrad as sg
        >>> def sg_seeded(model, x, target, seed):
        ...     return sg.smooth(model, x, target=target, samples=10, seed=seed).attribution
        >>> from torch.nn import Linear, ReLU, Sequential
        >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 3)).eval()
        >>> sensitivity_floor(sg_seeded, model, torch.rand(2, 4)).shape
        torch.Size([2])
    """
    if reference_seed in seeds:
        raise ValueError("reference_seed must differ from seeds")
    target_t = resolve_target(model, x, target)
    reference = explain(model, x, target_t, reference_seed).detach()
    maps = torch.stack([explain(model, x, target_t, s).detach() for s in seeds], dim=1)
    return max_relative_change(reference, maps)
