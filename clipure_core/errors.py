"""Exceptions the engine raises for problems a user can fix."""

from __future__ import annotations


class InputError(ValueError):
    """A request the engine refuses: the message says what was wrong and what is allowed."""


class WeightsUnavailableError(RuntimeError):
    """Model weights could not be found locally nor downloaded."""
