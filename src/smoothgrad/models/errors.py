"""The error :mod:`smoothgrad.models` raises: one line meant for the user."""

from __future__ import annotations

from smoothgrad.errors import UserError

__all__ = ["ModelError"]


class ModelError(UserError, ValueError):
    """A model cannot be built or loaded; the message is one line meant for the user."""
