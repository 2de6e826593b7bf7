"""The training-mode warning: given only when eval mode changes what the model computes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import smoothgrad as sg
from conftest import ReusedReluCNN, images, seeded


class Wrapper(nn.Module):
    """A wrapper made fresh around a model: in training mode, as every new module is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)  # type: ignore[no-any-return]


class OwnDropout(nn.Module):
    """A module of the user's reading `self.training` itself."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, 0.5, self.training)


def test_a_fresh_wrapper_around_a_model_in_eval_mode_gives_no_warning() -> None:
    """Issue 24: the fresh wrapper's own training flag triggered 'model is in training mode'."""
    inner = seeded(ReusedReluCNN())  # eval mode, with BatchNorm
    wrapper = Wrapper(inner)
    assert wrapper.training and not inner.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.smooth(wrapper, images(2), samples=2)
    assert wrapper.training and not inner.training  # both restored


@pytest.mark.parametrize(("model", "named"), [
    (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2)), "Dropout"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "BatchNorm1d"),
    (nn.Sequential(nn.Linear(4, 4), OwnDropout(), nn.Linear(4, 2)), "OwnDropout"),
])
def test_a_mode_dependent_module_in_training_mode_is_named(model: nn.Module, named: str) -> None:
    model.train()
    with pytest.warns(UserWarning, match=f"model is in training mode \\({named} behave"):
        sg.smooth(model, torch.randn(2, 4), samples=2)
    assert all(m.training for m in model.modules())


def test_mode_dependent_modules() -> None:
    from smoothgrad.guard import mode_dependent

    dependent = [nn.Dropout(), nn.Dropout2d(), nn.AlphaDropout(), nn.BatchNorm2d(3),
                 nn.InstanceNorm2d(3, track_running_stats=True), nn.LSTM(2, 2, dropout=0.5,
                 num_layers=2), nn.MultiheadAttention(4, 2, dropout=0.1),
                 nn.TransformerEncoderLayer(4, 2), OwnDropout()]
    independent = [nn.Linear(2, 2), nn.Conv2d(1, 1, 1), nn.ReLU(), nn.LayerNorm(2),
                   nn.InstanceNorm2d(3), nn.LSTM(2, 2), nn.MultiheadAttention(4, 2),
                   nn.Sequential(nn.Dropout()), Wrapper(nn.Dropout())]
    assert all(mode_dependent(m) for m in dependent)
    assert not any(mode_dependent(m) for m in independent)
