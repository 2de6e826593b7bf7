"""Class names: ImageNet's, and finding a class by name (with suggestions).

Example:
    >>> class_index("espresso")
    967
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from pathlib import Path

from smoothgrad.models.errors import ModelError

__all__ = ["class_index", "imagenet_labels"]

_DATA = Path(__file__).parent.parent / "data"


@functools.cache
def _imagenet_labels() -> tuple[str, ...]:
    text = (_DATA / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index = class id (torchvision's short names).

    Example:
        >>> imagenet_labels()[285]
        'Egyptian cat'
    """
    return list(_imagenet_labels())


def class_index(name: str, labels: Sequence[str] | None = None) -> int:
    """Index of class ``name`` in ``labels`` (default ImageNet), ignoring case.

    An unknown name is an error suggesting labels that hold its words first (``"cat"``:
    ``'tiger cat'``, ``'Persian cat'``, ...), then names spelt alike.

    Example:
        >>> class_index("espresso")
        967
    """
    labels = imagenet_labels() if labels is None else list(labels)
    folded = [label.casefold() for label in labels]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    close = _similar_labels(name, labels)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ModelError(f"unknown class {name!r}{hint}")


def _similar_labels(name: str, labels: Sequence[str], most: int = 5) -> list[str]:
    """Labels holding `name`'s words as words ("cat" -> "tiger cat", "Persian cat"), then
    labels holding them inside words, then spelling neighbours (difflib)."""
    words = re.findall(r"\w+", name.casefold())
    if not words:
        return difflib.get_close_matches(name, labels, n=3)

    def has(label: str, whole: bool) -> bool:
        folded = label.casefold()
        if whole:
            return all(re.search(rf"\b{re.escape(word)}\b", folded) for word in words)
        return all(word in folded for word in words)

    found = [label for label in labels if has(label, True)]
    found += [label for label in labels if label not in found and has(label, False)]
    found += [label for label in difflib.get_close_matches(name, labels, n=3)
              if label not in found]
    return found[:most]
