"""Latent-space purifiers: one module per defence, built by name (see `registry`)."""

from __future__ import annotations

from .base import BATCH_COUPLED, STEP_SIZE, STEPS, Purifier, Setting, null_prompt_embedding
from .cos import CosPurifier, cos_purify, neg_cos_gradient
from .diff import DiffPurifier
from .flags import (
    add_defense_flags,
    defense_arguments,
    defense_settings_from_args,
    flag_name,
    parser_for,
)
from .polar import GRADIENT_MODES, polar_step
from .registry import (
    PURIFIERS,
    build_purifier,
    check_defense,
    load_defense,
    load_defenses,
    model_title,
)
from .trace import TrajectoryRecorder

__all__ = [
    "BATCH_COUPLED",
    "GRADIENT_MODES",
    "PURIFIERS",
    "STEPS",
    "STEP_SIZE",
    "CosPurifier",
    "DiffPurifier",
    "Purifier",
    "Setting",
    "TrajectoryRecorder",
    "add_defense_flags",
    "build_purifier",
    "check_defense",
    "cos_purify",
    "defense_arguments",
    "defense_settings_from_args",
    "flag_name",
    "load_defense",
    "load_defenses",
    "model_title",
    "neg_cos_gradient",
    "null_prompt_embedding",
    "parser_for",
    "polar_step",
]
