"""Batch robustness evaluation: `python -m clipure_core.evaluate` (see README, 'Batch
evaluation'). Resumable, and sharded across processes under torchrun."""

from .config import EvalConfig
from .data import DataUnavailableError, EvalDataset, load_dataset
from .runner import Outcome, run_evaluation
from .stats import wilson_interval

__all__ = [
    "DataUnavailableError",
    "EvalConfig",
    "EvalDataset",
    "Outcome",
    "load_dataset",
    "run_evaluation",
    "wilson_interval",
]
