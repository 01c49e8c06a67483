"""Latent-space purifiers: one module per defence, built by name."""

from __future__ import annotations

from .base import Purifier, Setting
from .cos import CosPurifier, cos_purify, neg_cos_gradient
from .diff import DiffPurifier
from .flags import add_defense_flags, defense_settings_from_args, flag_name
from .polar import GRADIENT_MODES, polar_step
from .registry import PURIFIERS, build_purifier, check_defense
from .trace import TrajectoryRecorder

__all__ = [
    "GRADIENT_MODES",
    "PURIFIERS",
    "CosPurifier",
    "DiffPurifier",
    "Purifier",
    "Setting",
    "TrajectoryRecorder",
    "add_defense_flags",
    "build_purifier",
    "check_defense",
    "cos_purify",
    "defense_settings_from_args",
    "flag_name",
    "neg_cos_gradient",
    "polar_step",
]
