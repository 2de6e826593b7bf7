"""Several inputs, forward arguments, model outputs, per-example baselines, Captum keywords,
per-feature σ and Grad-CAM through `sg.smooth` (issue 11)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from conftest import SeparateReluCNN, images, seeded
from smoothgrad.methods.grad_cam import grad_cam_plus_plus
from smoothgrad.noise import standard_normal


class ImageAndTable(nn.Module):
    """An image branch and a table branch, with integer ids and a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.table = nn.Linear(4, 6)
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(2 * 16 + 6, 3)

    def forward(self, image: Tensor, table: Tensor, ids: Tensor, scale: Tensor) -> object:
        extra = self.table(table * scale).tanh() + self.embed(ids).mean(dim=1)
        logits = self.head(torch.cat([self.conv(image).relu().flatten(1), extra], dim=1))
        return {"logits": logits, "extra": extra}


def _two_inputs() -> tuple[nn.Module, tuple[Tensor, Tensor, Tensor], Tensor]:
    model = seeded(ImageAndTable())
    generator = torch.Generator().manual_seed(3)
    image, table = torch.randn(2, 1, 4, 4, generator=generator), torch.randn(2, 4,
                                                                            generator=generator)
    ids = torch.randint(0, 10, (2, 5), generator=generator)
    return model, (image, table, ids), torch.tensor([[1.0], [2.0]])


def test_two_inputs_equal_a_hand_loop() -> None:
    model, (image, table, ids), scale = _two_inputs()
    result = sg.smooth(model, (image, table, ids), forward_kwargs={"scale": scale},
                       samples=5, noise=0.2, seed=2, batch_size=3)
    assert isinstance(result.attribution, tuple) and len(result.attribution) == 2
    assert isinstance(result.stderr, tuple) and result.stderr[1].shape == table.shape
    sigmas = [0.2 * (t.flatten(1).amax(1) - t.flatten(1).amin(1)) for t in (image, table)]
    noise = standard_normal(2, range(5), (16 + 4,))
    totals = [torch.zeros_like(image), torch.zeros_like(table)]
    for k in range(5):
        noisy_image = (image + sigmas[0].view(-1, 1, 1, 1) * noise[k, :16].view(1, 4, 4)
                       ).requires_grad_(True)
        noisy_table = (table + sigmas[1].view(-1, 1) * noise[k, 16:]).requires_grad_(True)
        logits = model(noisy_image, noisy_table, ids, scale)["logits"]
        grads = torch.autograd.grad(logits.gather(1, result.target[:, None]).sum(),
                                    (noisy_image, noisy_table))
        totals = [total + grad for total, grad in zip(totals, grads, strict=True)]
    for ours, total in zip(result.attribution, totals, strict=True):
        torch.testing.assert_close(ours, total / 5, rtol=1e-5, atol=1e-6)
    assert ids.dtype == torch.long
    assert isinstance(result.sigma, tuple) and torch.allclose(result.sigma[1], sigmas[1])


def test_stdev_per_input_and_per_feature() -> None:
    model, inputs, scale = _two_inputs()
    kwargs = {"forward_kwargs": {"scale": scale}, "samples": 2}
    result = sg.smooth(model, inputs, stdev=(0.5, torch.tensor([0.0, 1.0, 2.0, 3.0])), **kwargs)
    assert torch.equal(result.sigma[1][0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert result.sigma[0].eq(0.5).all()
    with pytest.raises(ValueError, match="stdev must be one value or one per floating input"):
        sg.smooth(model, inputs, stdev=(0.1, 0.2, 0.3), **kwargs)
    table = torch.tensor([[1.0, 1000.0], [2.0, 3000.0]])
    linear = nn.Linear(2, 2).eval()
    feature = sg.smooth(linear, table, noise=0.1, noise_range=torch.tensor([1.0, 1000.0]),
                        samples=2)
    assert torch.equal(feature.sigma, torch.tensor([[0.1, 100.0], [0.1, 100.0]]))
    assert sg.smooth(linear, table, stdev=torch.tensor([0.0, 5.0]), samples=2).sigma.shape == (
        2, 2)


def test_outputs_dict_and_callable() -> None:
    model, inputs, scale = _two_inputs()
    via_dict = sg.smooth(model, inputs, forward_kwargs={"scale": scale}, samples=3)
    via_fn = sg.smooth(model, inputs, forward_kwargs={"scale": scale}, samples=3,
                       output=lambda out: out["logits"])
    for a, b in zip(via_dict.attribution, via_fn.attribution, strict=True):
        assert torch.equal(a, b)


    class NoLogits(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"scores": x[:, :2] * x[:, 1:], "hidden": x}

    with pytest.raises(ValueError, match="keys: 'scores', 'hidden'"):
        sg.smooth(NoLogits().eval(), torch.randn(2, 3), samples=2)
    assert sg.smooth(NoLogits().eval(), torch.randn(2, 3), samples=2,
                     output=lambda out: out["scores"]).attribution.shape == (2, 3)


@pytest.mark.parametrize("name", ["integrated_gradients", "deeplift"])
def test_per_example_baselines(name: str) -> None:
    model = seeded(SeparateReluCNN())
    x = images(4)
    baseline = images(4, seed=7)
    ours = sg.smooth(model, x, method=name, noise=0.0, method_kwargs={"baseline": baseline})
    from captum.attr import DeepLift, IntegratedGradients

    reference = IntegratedGradients(model) if name == "integrated_gradients" else DeepLift(model)
    expected = reference.attribute(x, baselines=baseline, target=ours.target)
    torch.testing.assert_close(ours.attribution, expected, rtol=1e-4, atol=1e-5)
    method = sg.methods.registry.BY_NAME[name]
    noisy = sg.smooth(model, x, method=functools.partial(method, baseline=baseline), samples=3,
                      batch_size=5)
    assert noisy.attribution.shape == x.shape


def test_captum_keywords_and_callable_target() -> None:
    from captum.attr import GradientShap, Occlusion

    model = seeded(SeparateReluCNN())
    x = images(2)
    occlusion = sg.smooth(model, x, method=Occlusion(model), noise=0.0,
                          method_kwargs={"sliding_window_shapes": (3, 2, 2), "strides": 2})
    expected = Occlusion(model).attribute(x, target=occlusion.target,
                                          sliding_window_shapes=(3, 2, 2), strides=2)
    torch.testing.assert_close(occlusion.attribution, expected)
    shap = sg.smooth(model, x, method=GradientShap(model), samples=2,
                     method_kwargs={"baselines": torch.zeros(3, 3, 8, 8)})
    assert shap.attribution.shape == x.shape

    def score(output: Tensor) -> Tensor:
        return output[:, 0] - output[:, 1]

    from captum.attr import InputXGradient

    via_captum = sg.smooth(model, x, method=InputXGradient(model), target=score, samples=3)
    ours = sg.smooth(model, x, method="input_x_gradient", target=score, samples=3)
    torch.testing.assert_close(via_captum.attribution, ours.attribution, rtol=1e-5, atol=1e-7)


def test_smooth_grad_cam_plus_plus() -> None:
    model = seeded(SeparateReluCNN())
    x = images(2)
    layer = model.features[3]
    result = sg.smooth(model, x, method="grad_cam_plus_plus", samples=4,
                       method_kwargs={"layer": layer})
    assert result.attribution.shape == x.shape and bool((result.attribution >= 0).all())
    plain = sg.smooth(model, x, method="grad_cam", noise=0.0)
    expected = sg.methods.registry.attributed(
        grad_cam_plus_plus(model, x, plain.target, layer=layer), 2).map
    again = sg.smooth(model, x, method="grad_cam_plus_plus", noise=0.0,
                      method_kwargs={"layer": layer})
    torch.testing.assert_close(again.attribution, expected)
