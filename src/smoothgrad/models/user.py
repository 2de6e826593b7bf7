"""Your own models and weight files: ``"module:fn"`` and ``"file.py:fn"`` factories, state
dicts read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from smoothgrad.files import one_line
from smoothgrad.models.errors import ModelError
from smoothgrad.models.pipelines import imagenet_preprocess

__all__ = ["load_weights", "user_model"]


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``: no arbitrary objects are unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file '{path}' not found") from None
    except IsADirectoryError:
        raise ModelError(f"weights file '{path}' is a directory") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise ModelError(f"cannot read weights file '{path}': not a PyTorch file") from None
        raise ModelError(
            f"refusing to load '{path}': it holds a pickled {found.group(1)} object, not a "
            "plain state dict (save model.state_dict() instead)"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read weights file '{path}': {first}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError(f"weights file '{path}' is not a state dict (name -> tensor)")
    return dict(state)


def load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]!r})"
        for keys, what in [(missing, "missing keys"), (unexpected, "unexpected keys"),
                           (wrong, "shape mismatches")]
        if keys
    ]
    if problems:
        raise ModelError(f"weights file '{path}' does not fit model {name!r}: "
                         + ", ".join(problems))
    model.load_state_dict(state, strict=True)


def _import_spec(spec: str) -> Any:
    """Resolve ``"module.path:attr"`` or ``"path/to/file.py:attr"`` to the attribute.

    A file's folder goes first on ``sys.path`` (so it can import its sibling modules, now and
    later); a module name is also looked for in the current folder. Any exception raised
    while importing the user's code becomes a one-line ModelError.
    """
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ModelError(f"model spec {spec!r} must look like 'module:callable'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(spec, Path(where))
    else:
        _on_path(os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is None or not where.startswith(exc.name):
                raise _import_failed(spec, where, exc) from exc  # a module it imports
            raise ModelError(f"model spec {spec!r}: cannot import {where!r} ({exc})") from None
        except Exception as exc:
            raise _import_failed(spec, where, exc) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model spec {spec!r}: {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _import_file(spec: str, file: Path) -> Any:
    if not file.is_file():
        raise ModelError(f"model spec {spec!r}: file '{file}' not found")
    module_name = f"_smoothgrad_user_{file.stem}"
    loader = importlib.util.spec_from_file_location(module_name, file)
    if loader is None or loader.loader is None:
        raise ModelError(f"model spec {spec!r}: cannot import '{file}'")
    module = importlib.util.module_from_spec(loader)
    _on_path(str(file.resolve().parent))
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise _import_failed(spec, str(file), exc) from exc
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _on_path(folder: str) -> None:
    if folder not in sys.path and os.path.realpath(folder) not in map(os.path.realpath, sys.path):
        sys.path.insert(0, folder)


def _import_failed(spec: str, where: str, exc: BaseException) -> ModelError:
    return ModelError(f"model spec {spec!r}: importing '{where}' failed: {one_line(exc)}")


def user_model(spec: str) -> tuple[nn.Module, Callable[[Image.Image], Any]]:
    factory = _import_spec(spec)
    if not callable(factory):
        raise ModelError(f"model spec {spec!r} is not callable")
    try:
        made = factory()
    except Exception as exc:  # the user's code: one line, like an import error
        raise ModelError(f"model spec {spec!r}: calling it failed: {one_line(exc)}") from exc
    model, preprocess = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model spec {spec!r} returned {type(model).__name__}, "
            "expected an nn.Module or a (module, preprocess) tuple"
        )
    if preprocess is not None and not callable(preprocess):
        raise ModelError(f"model spec {spec!r} returned a preprocess that is not callable")
    return model, imagenet_preprocess if preprocess is None else preprocess
