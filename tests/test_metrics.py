"""Tests for smoothgrad.metrics against known answers, scipy/skimage and Captum references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import smoothgrad
from smoothgrad import metrics


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    """A small ReLU CNN on 3xHxW images, initialised without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, classes),
        )
    return model.eval()


def gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Plain input gradient of the target logit (a reference explainer, grad enabled inside)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


class PatchModel(nn.Module):
    """Two classes; logits (s, -s) with s the sum of a 4x4 patch over channels."""

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, :, 4:8, 6:10].sum(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1)


# ------------------------------------------------------------------ building blocks


def test_spearman_known_answers() -> None:
    fixed = torch.randn(1, 10_000, generator=_seeded(0))
    random = torch.randn(1, 10_000, generator=_seeded(1))
    assert abs(metrics.spearman(fixed, random).item()) < 0.1
    assert metrics.spearman(fixed, fixed).item() == pytest.approx(1.0, abs=1e-12)
    assert metrics.spearman(fixed, -fixed).item() == pytest.approx(-1.0, abs=1e-12)
    # monotone transforms keep rank correlation 1
    assert metrics.spearman(fixed, fixed.exp()).item() == pytest.approx(1.0, abs=1e-12)


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = torch.randint(0, 5, (3, 2, 7, 7), generator=_seeded(2)).float()
    b = torch.randint(0, 4, (3, 2, 7, 7), generator=_seeded(3)).float()
    ours = metrics.spearman(a, b)
    assert ours.shape == (3,)
    for i in range(3):
        reference = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(reference, abs=1e-6)


def test_relative_l2() -> None:
    a = torch.randn(2, 3, 5, 5, generator=_seeded(0))
    assert torch.equal(metrics.relative_l2(a, a), torch.zeros(2))
    assert torch.allclose(metrics.relative_l2(3 * a, a), torch.full((2,), 2.0))


def test_gini_uniform_and_one_hot() -> None:
    n = 3 * 8 * 8
    assert torch.allclose(metrics.gini(torch.full((2, 3, 8, 8), 0.7)), torch.zeros(2), atol=1e-6)
    one_hot = torch.zeros(2, 3, 8, 8)
    one_hot[0, 1, 2, 3] = 5.0
    one_hot[1, 0, 0, 0] = -2.0  # |.| is used
    assert torch.allclose(metrics.gini(one_hot), torch.full((2,), 1 - 1 / n), atol=1e-6)
    dense = torch.randn(1, n, generator=_seeded(0))
    assert 0 < metrics.gini(dense).item() < metrics.gini(one_hot)[0].item()


def _quantus() -> object:
    """Quantus (installed by `make` with --no-deps; see the Makefile), or skip."""
    return pytest.importorskip("quantus", reason="quantus is installed by make's setup step")


def test_gini_equals_quantus_sparseness() -> None:
    quantus = _quantus()
    x = torch.rand(4, 3, 10, 10, generator=_seeded(0), dtype=torch.float64)
    a = torch.randn(4, 1, 10, 10, generator=_seeded(1), dtype=torch.float64)
    a[1] = a[1].abs() ** 4  # a sparser map
    sparseness = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
    theirs = torch.tensor(sparseness(model=None, x_batch=x.numpy(), y_batch=np.zeros(4, int),
                                     a_batch=a.numpy().copy()), dtype=torch.float64)
    # the same formula: exact once Quantus' 1e-7 shift is applied to ours
    torch.testing.assert_close(metrics.gini(a.abs() + 1e-7), theirs, rtol=0, atol=1e-12)
    # and within the shift's effect without it
    torch.testing.assert_close(metrics.gini(a), theirs, rtol=0, atol=1e-6)


def test_gini_of_an_all_zero_map_is_zero_as_in_quantus() -> None:
    # an all-zero map was NaN; it is a uniform map and scores 0 (documented policy)
    maps = torch.rand(3, 1, 6, 6, generator=_seeded(0), dtype=torch.float64)
    maps[1] = 0.0
    ours = metrics.gini(maps)
    assert ours[1].item() == 0.0 and torch.isfinite(ours).all()
    assert metrics.gini(torch.zeros(2, 3, 4, 4)).tolist() == [0.0, 0.0]
    quantus = _quantus()
    x = np.random.default_rng(0).random((3, 3, 6, 6))
    sparseness = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
    theirs = sparseness(model=None, x_batch=x, y_batch=np.zeros(3, int), a_batch=maps.numpy())
    assert theirs[1] == pytest.approx(0.0, abs=1e-12)  # Quantus' shift gives 0 in a mixed batch
    with pytest.raises(AssertionError, match="all equal to zero"):  # and refuses a zero batch
        sparseness(model=None, x_batch=x[:1], y_batch=np.zeros(1, int),
                   a_batch=np.zeros((1, 1, 6, 6)))


def test_total_variation_constant_and_checkerboard() -> None:
    assert torch.equal(metrics.total_variation(torch.full((2, 3, 8, 8), 4.0)), torch.zeros(2))
    for size in (8, 32):
        i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        board = ((i + j) % 2).float()[None]
        assert metrics.total_variation(board).item() == pytest.approx(1.0)
        assert metrics.total_variation(board * 7 + 3).item() == pytest.approx(1.0)
    random = torch.rand(4, 16, 16, generator=_seeded(0))
    assert (metrics.total_variation(random) < 1).all()


def test_ssim_matches_skimage() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a = torch.rand(3, 20, 17, generator=_seeded(0), dtype=torch.float64)
    b = (a + 0.3 * torch.rand(3, 20, 17, generator=_seeded(1), dtype=torch.float64)) / 1.3
    ours = metrics.ssim(a, b)
    for i in range(3):
        reference = skimage_metrics.structural_similarity(
            a[i].numpy(),
            b[i].numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(reference, abs=1e-10)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ deletion / insertion


def test_deletion_insertion_perfect_map_beats_random() -> None:
    model = PatchModel()
    x = torch.randn(3, 3, 16, 16, generator=_seeded(0))
    x[:, :, 4:8, 6:10] = 0.5 + 0.1 * x[:, :, 4:8, 6:10]
    perfect = torch.zeros(3, 16, 16)
    perfect[:, 4:8, 6:10] = 1.0
    random = torch.rand(3, 16, 16, generator=_seeded(1))

    assert (metrics.deletion_auc(model, x, perfect) < metrics.deletion_auc(model, x, random)).all()
    assert (
        metrics.insertion_auc(model, x, perfect) > metrics.insertion_auc(model, x, random)
    ).all()


def test_deletion_curve_protocol() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16, generator=_seeded(0))
    attribution = torch.randn(2, 3, 16, 16, generator=_seeded(1))
    curve = metrics.deletion_curve(model, x, attribution, steps=16, batch_size=5)
    target = model(x).argmax(dim=1)
    probs = model(x).softmax(dim=1)[torch.arange(2), target]
    flat = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    flat_probs = model(flat).softmax(dim=1)[torch.arange(2), target]
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1 and curve.scores.shape == (2, 17)
    assert torch.allclose(curve.scores[:, 0], probs)
    assert torch.allclose(curve.scores[:, -1], flat_probs)
    assert torch.allclose(curve.auc, torch.trapezoid(curve.scores, curve.fractions, dim=1))
    unbatched = metrics.deletion_curve(model, x, attribution, steps=16, batch_size=100)
    assert torch.allclose(curve.scores, unbatched.scores)
    insertion = metrics.insertion_curve(model, x, attribution, steps=16)
    assert torch.allclose(insertion.scores[:, -1], probs)


def test_substrates_are_what_deletion_ends_at_and_insertion_starts_from() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16, generator=_seeded(0))
    attribution = torch.rand(2, 16, 16, generator=_seeded(1))
    target = model(x).argmax(dim=1)

    def probability(images: Tensor) -> Tensor:
        return model(images).softmax(dim=1)[torch.arange(2), target]

    images = {"zeros": torch.zeros_like(x), "mean": x.mean(dim=(2, 3), keepdim=True) + 0 * x,
              "blur": metrics.faithfulness.blur(x, 11, 5.0)}
    for name, image in images.items():
        deletion = metrics.deletion_curve(model, x, attribution, substrate=name, steps=4)
        insertion = metrics.insertion_curve(model, x, attribution, substrate=name, steps=4)
        torch.testing.assert_close(deletion.scores[:, -1], probability(image))
        torch.testing.assert_close(insertion.scores[:, 0], probability(image))
    # the defaults are unchanged: deletion to the mean colour, insertion from the blur
    torch.testing.assert_close(metrics.deletion_auc(model, x, attribution, steps=4),
                               metrics.deletion_auc(model, x, attribution, steps=4,
                                                    substrate="mean"))
    torch.testing.assert_close(metrics.insertion_auc(model, x, attribution, steps=4),
                               metrics.insertion_auc(model, x, attribution, steps=4,
                                                     substrate="blur"))
    with pytest.raises(ValueError, match="substrate must be one of"):
        metrics.deletion_curve(model, x, attribution, substrate="black")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leave steps and substrate out"):
        metrics.deletion_curve(model, x, attribution, rise=True, steps=10)
    with pytest.raises(ValueError, match="leave steps and substrate out"):
        metrics.insertion_curve(model, x, attribution, rise=True, substrate="blur")


def _rise_reference(model: nn.Module, image: Tensor, saliency: np.ndarray, mode: str,
                    substrate: Tensor) -> np.ndarray:
    """RISE's CausalMetric.single_run (evaluation.py, Petsiuk et al.), rewritten: steps of 224
    pixels of a 224x224 image, softmax probability of the clean top class."""
    pixels, step = 224 * 224, 224
    n_steps = (pixels + step - 1) // step
    with torch.no_grad():
        top = int(model(image).argmax(dim=1))
        start, finish = (image.clone(), substrate) if mode == "del" else (substrate.clone(), image)
        order = np.flip(np.argsort(saliency.reshape(-1, pixels), axis=1), axis=-1)
        scores = np.empty(n_steps + 1)
        for i in range(n_steps + 1):
            scores[i] = float(model(start).softmax(dim=1)[0, top])
            if i < n_steps:
                coords = torch.from_numpy(order[0, step * i : step * (i + 1)].copy())
                start.view(1, 3, pixels)[0, :, coords] = finish.view(1, 3, pixels)[0, :, coords]
    return scores


def _rise_auc(scores: np.ndarray) -> float:
    """RISE's auc(): the trapezoid over evenly spaced steps, normalised to [0, 1]."""
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1))


def _rise_blur(x: Tensor) -> Tensor:
    """RISE's insertion substrate: gkern(11, 5) (an impulse through gaussian_filter), zero
    padding, one channel at a time."""
    ndimage = pytest.importorskip("scipy.ndimage")
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    kernel = torch.zeros(3, 3, 11, 11)
    for c in range(3):
        kernel[c, c] = torch.from_numpy(ndimage.gaussian_filter(impulse, 5).astype("float32"))
    return torch.nn.functional.conv2d(x, kernel, padding=5)


def test_rise_mode_equals_rise_deletion_and_insertion() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                              nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.randn(1, 3, 224, 224, generator=_seeded(0))  # RISE's fixed size; one image
    saliency = torch.rand(1, 224, 224, generator=_seeded(1), dtype=torch.float64)
    blurred = _rise_blur(x)
    torch.testing.assert_close(metrics.faithfulness.blur(x, 11, 5.0, rise=True), blurred,
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(metrics.faithfulness.blur(x, 11, 5.0), blurred, atol=1e-2)
    deletion = metrics.deletion_curve(model, x, saliency, rise=True)
    insertion = metrics.insertion_curve(model, x, saliency, rise=True)
    assert deletion.scores.shape == (1, 225)
    order = saliency[0].numpy()
    expected = _rise_reference(model, x, order, "del", torch.zeros_like(x))
    np.testing.assert_allclose(deletion.scores[0].numpy(), expected, atol=1e-6)
    assert deletion.auc[0].item() == pytest.approx(_rise_auc(expected), abs=1e-6)
    expected = _rise_reference(model, x, order, "ins", blurred)
    np.testing.assert_allclose(insertion.scores[0].numpy(), expected, atol=1e-5)
    assert insertion.auc[0].item() == pytest.approx(_rise_auc(expected), abs=1e-5)


def test_deletion_with_zeros_is_quantus_pixel_flipping_on_black_images() -> None:
    # Quantus' PixelFlipping fills with the image's minimum ("black"), has no point before the
    # first step and integrates with unit spacing: on images whose minimum is 0 its curve is
    # ours without the first point and its AUC is ours times the steps, less (s0 + s1) / 2
    quantus = _quantus()
    model = tiny_cnn()
    x = torch.rand(2, 3, 12, 12, generator=_seeded(0))
    x[:, :, 0, 0] = 0.0
    saliency = torch.rand(2, 1, 12, 12, generator=_seeded(1))
    target = model(x).argmax(dim=1)
    steps = 36  # 4 pixels, 12 features a step (Quantus wants a divisor of H W)
    ours = metrics.deletion_curve(model, x, saliency[:, 0], target, steps=steps,
                                  substrate="zeros")
    flipping = quantus.PixelFlipping(features_in_step=3 * 144 // steps, perturb_baseline="black",
                                     normalise=False, abs=False, disable_warnings=True)
    kwargs = {"model": model, "x_batch": x.numpy(), "y_batch": target.numpy(),
              "a_batch": saliency.expand(-1, 3, -1, -1).numpy().copy(), "device": "cpu"}
    theirs = torch.tensor(flipping(**kwargs))
    torch.testing.assert_close(ours.scores[:, 1:], theirs, rtol=1e-5, atol=1e-6)
    # Quantus' AUC is np.trapz(curve, dx=1) (utils.calculate_auc; numpy 2.4 dropped trapz)
    auc = torch.tensor(np.trapezoid(theirs.numpy(), dx=1, axis=1))
    torch.testing.assert_close(ours.auc * steps,
                               auc + (ours.scores[:, 0] + ours.scores[:, 1]) / 2,
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ Captum cross-checks


def test_infidelity_matches_captum() -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    model = tiny_cnn()
    x = torch.randn(3, 3, 12, 12, generator=_seeded(0))
    target = model(x).argmax(dim=1)
    attribution = gradient(model, x, target)
    k = 8
    perturbations = 0.1 * torch.randn(3, k, 3, 12, 12, generator=_seeded(1))

    def replay(inputs: Tensor) -> tuple[Tensor, Tensor]:
        flat = perturbations.flatten(0, 1)  # Captum repeats each example k times, in order
        return flat, inputs - flat

    for normalize in (True, False):
        ours = metrics.infidelity(
            model, x, attribution, target, perturbations=perturbations, normalize=normalize
        )
        theirs = captum_metrics.infidelity(
            model,
            replay,
            x,
            attribution,
            target=target,
            normalize=normalize,
            n_perturb_samples=k,
        )
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    # the seeded default draw is reproducible and is what ``perturbations`` replays
    drawn = metrics.infidelity(model, x, attribution, target, n_perturb_samples=k,
                               noise_std=0.1)
    replayed = metrics.infidelity(
        model,
        x,
        attribution,
        target,
        perturbations=0.1 * torch.randn(3, k, 3, 12, 12, generator=_seeded(0)),
    )
    assert torch.allclose(drawn, replayed)


def test_infidelity_known_properties() -> None:
    model = nn.Linear(6, 3)
    x = torch.randn(4, 6, generator=_seeded(0))
    target = model(x).argmax(dim=1)
    exact = model.weight[target].detach()  # the exact local explanation of a linear model
    assert torch.allclose(metrics.infidelity(model, x, exact, target), torch.zeros(4), atol=1e-8)
    other = torch.randn(4, 6, generator=_seeded(1))
    scores = metrics.infidelity(model, x, other, target)
    assert (scores > 0).all()
    # with normalize, rescaling the attribution does not change the score (the point of beta)
    assert torch.allclose(metrics.infidelity(model, x, 7.0 * other, target), scores, rtol=1e-4)


def test_sensitivity_max_matches_captum() -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    model = tiny_cnn()
    x = torch.randn(2, 3, 12, 12, generator=_seeded(0))
    target = model(x).argmax(dim=1)
    k, radius = 6, 0.05
    deltas = radius * (2 * torch.rand(2, k, 3, 12, 12, generator=_seeded(1)) - 1)

    def replay(inputs: Tensor) -> Tensor:
        return inputs + deltas.flatten(0, 1)

    def captum_explain(inputs: Tensor | tuple[Tensor], target: Tensor) -> tuple[Tensor]:
        # Captum passes the clean input as a 1-tuple and expects tuples back
        return (gradient(model, inputs[0] if isinstance(inputs, tuple) else inputs, target),)

    ours = metrics.sensitivity_max(gradient, model, x, target, perturbations=deltas, batch_size=5)
    theirs = captum_metrics.sensitivity_max(
        captum_explain,
        x,
        perturb_func=replay,
        perturb_radius=radius,
        n_perturb_samples=k,
        norm_ord="fro",
        target=target,
    )
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    drawn = metrics.sensitivity_max(gradient, model, x, perturb_radius=radius,
                                    n_perturb_samples=k, generator=1)
    assert torch.allclose(drawn, ours)


def test_parameter_names_follow_captum() -> None:
    import inspect

    captum_metrics = pytest.importorskip("captum.metrics")
    shared = {"infidelity": {"target", "n_perturb_samples", "normalize"},
              "sensitivity_max": {"perturb_radius", "n_perturb_samples"}}  # target: **kwargs
    for name, names in shared.items():
        ours = set(inspect.signature(getattr(metrics, name)).parameters)
        theirs = set(inspect.signature(getattr(captum_metrics, name)).parameters)
        assert names <= ours & theirs, (name, names - ours)
    # the defaults that differ from Captum's are ours on purpose (documented)
    infidelity = inspect.signature(metrics.infidelity).parameters
    assert (infidelity["normalize"].default, infidelity["n_perturb_samples"].default) == (True, 50)
    sensitivity = inspect.signature(metrics.sensitivity_max).parameters
    assert (sensitivity["perturb_radius"].default,
            sensitivity["n_perturb_samples"].default) == (0.02, 10)  # Captum's


def test_sensitivity_max_equals_quantus_on_the_same_perturbations() -> None:
    quantus = _quantus()
    model = tiny_cnn().double()
    x = torch.randn(3, 3, 10, 10, generator=_seeded(0), dtype=torch.float64)
    target = model(x).argmax(dim=1)
    k, radius = 5, 0.2
    deltas = radius * (2 * torch.rand(3, k, 3, 10, 10, generator=_seeded(1),
                                      dtype=torch.float64) - 1)
    step = iter(range(k))

    def replay(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        # Quantus perturbs the whole batch once per sample: sample j of every example
        return arr + deltas[:, next(step)].reshape(arr.shape[0], -1).numpy()

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray,
                **_: object) -> np.ndarray:
        return gradient(model, torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()

    reference = gradient(model, x, target)
    ours = metrics.sensitivity_max(gradient, model, x, target, perturbations=deltas)
    max_sensitivity = quantus.MaxSensitivity(
        nr_samples=k, perturb_func=replay, lower_bound=radius, normalise=False, abs=False,
        disable_warnings=True)
    theirs = max_sensitivity(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                             a_batch=reference.numpy(), explain_func=explain, device="cpu",
                             softmax=False)
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64), rtol=1e-10,
                               atol=1e-12)


def test_sensitivity_max_of_a_constant_explanation_is_zero() -> None:
    model = nn.Linear(6, 3)  # its gradient does not depend on the input
    x = torch.randn(3, 6, generator=_seeded(0))
    assert torch.equal(metrics.sensitivity_max(gradient, model, x, perturb_radius=0.5),
                       torch.zeros(3))


def test_sensitivity_floor() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 12, 12, generator=_seeded(0))

    def deterministic(model: nn.Module, x: Tensor, target: Tensor, seed: int) -> Tensor:
        return gradient(model, x, target)

    def noisy(model: nn.Module, x: Tensor, target: Tensor, seed: int) -> Tensor:
        noise = torch.randn(x.shape, generator=_seeded(seed))
        return gradient(model, x, target) + 0.1 * noise

    assert torch.equal(metrics.sensitivity_floor(deterministic, model, x), torch.zeros(2))
    assert (metrics.sensitivity_floor(noisy, model, x) > 0).all()


# ------------------------------------------------------------------ randomisation


def test_randomization_check() -> None:
    model = tiny_cnn()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=_seeded(0))
    rng_before = torch.get_rng_state()

    rows = metrics.randomization_check(gradient, model, x, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [row.layer for row in rows] == ["original", "6", "2", "0", "random map"]
    assert torch.allclose(rows[0].spearman_abs, torch.ones(2))
    assert torch.allclose(rows[0].spearman_signed, torch.ones(2))
    assert torch.allclose(rows[0].ssim, torch.ones(2))
    assert (rows[-2].spearman_abs < 0.8).all() and (rows[-2].ssim < 0.8).all()
    assert (rows[-1].spearman_abs.abs() < 0.15).all()
    assert (rows[-1].spearman_signed.abs() < 0.15).all()
    again = metrics.randomization_check(gradient, model, x, seed=0)
    for row, repeat in zip(rows, again, strict=True):
        assert torch.equal(row.spearman_signed, repeat.spearman_signed)


def _quantus_mprt_order(model: nn.Module) -> list[str]:
    """The layers Quantus' MPRT (top_down) randomises, in its order (global RNG kept)."""
    quantus = _quantus()
    wrapped = quantus.PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
    with torch.random.fork_rng(devices=[]):  # Quantus seeds the global RNG for every layer
        return [name for name, _ in wrapped.get_random_layer_generator(order="top_down")]


class NormedCNN(nn.Module):
    """Nested modules, a BatchNorm without affine parameters (running statistics only)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stem(x))


def test_randomization_layer_order_is_quantus_mprt_order() -> None:
    x = torch.randn(2, 3, 16, 16, generator=_seeded(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        normed = NormedCNN().eval()
        normed.stem[1].running_mean.uniform_(-1, 1)  # trained statistics, not the defaults
    for model in (tiny_cnn(), normed):
        rows = metrics.randomization_check(gradient, model, x, seed=0)
        assert [row.layer for row in rows[1:-1]] == _quantus_mprt_order(model)
    # the running statistics of the BatchNorm are re-initialised too (Quantus resets them)
    rows = metrics.randomization_check(gradient, normed, x, seed=0)
    assert [row.layer for row in rows] == ["original", "head.2", "stem.1", "stem.0",
                                           "random map"]


def test_randomization_check_explicit_layers() -> None:
    model = tiny_cnn()
    x = torch.randn(1, 3, 16, 16, generator=_seeded(0))
    rows = metrics.randomization_check(gradient, model, x, layers=["2"])
    assert [row.layer for row in rows] == ["original", "2", "random map"]
    with pytest.raises(ValueError, match="reset_parameters"):
        metrics.randomization_check(gradient, model, x, layers=["1"])  # ReLU has no parameters


# ------------------------------------------------------------------ convergence


@pytest.mark.skipif(not hasattr(smoothgrad, "smooth"), reason="smoothgrad.smooth not built yet")
def test_convergence_error_decreases() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 8, 8, generator=_seeded(0))
    rows = metrics.convergence(
        model,
        x,
        method=gradient,
        samples=(2, 50),
        reference_samples=300,
        noise=0.2,
        batch_size=100,
    )
    assert [row.samples for row in rows] == [2, 50]
    low, high = rows
    assert (high.relative_l2 < low.relative_l2).all()
    assert (high.spearman > low.spearman).all()
    assert (high.seed_agreement > low.seed_agreement).all()
    with pytest.raises(ValueError, match="reference_seed"):
        metrics.convergence(model, x, method=gradient, seeds=(0, 1), reference_seed=1)


# ------------------------------------------------------------------ layering


def test_metrics_and_evaluation_import_only_downwards() -> None:
    """metrics/, evaluation, maps and tables import no PIL, argparse, CLI, viz or file helpers,
    and never `smoothgrad` itself (the package root imports them)."""
    import ast
    from pathlib import Path

    root = Path(smoothgrad.__file__).parent
    files = [*sorted((root / "metrics").glob("*.py")),
             *sorted((root / "evaluation").glob("*.py")), root / "maps.py", root / "tables.py"]
    banned = ("PIL", "argparse", "smoothgrad.cli", "smoothgrad.viz", "smoothgrad.images",
              "smoothgrad.files", "smoothgrad.batch", "matplotlib")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.module == "smoothgrad":
                    names = [f"smoothgrad.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
                assert name not in ("smoothgrad", "smoothgrad.smooth"), f"{path.name}: {name}"
