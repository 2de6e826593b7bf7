"""SmoothGrad saliency maps for PyTorch models: seeded, batched, honest about their uncertainty.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    >>> sg.smooth(model, torch.randn(1, 4), samples=10).attribution.shape
    torch.Size([1, 4])
"""

from smoothgrad import display, images, meanfield, methods, metrics, models, text, tokens, viz
from smoothgrad.config import DEFAULT_NOISE, MeanField, SmoothConfig
from smoothgrad.engine import smooth
from smoothgrad.explainer import SmoothGrad
from smoothgrad.inputs import Inputs
from smoothgrad.result import SmoothResult

__all__ = [
    "DEFAULT_NOISE", "Inputs", "MeanField", "SmoothConfig", "SmoothGrad", "SmoothResult",
    "display", "images", "meanfield", "methods", "metrics", "models", "smooth", "text",
    "tokens", "viz",
]
__version__ = "0.1.0"
