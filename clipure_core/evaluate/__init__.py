"""Batch robustness evaluation: `python -m clipure_core.evaluate` (see
docs/evaluation.md). Resumable, and sharded across processes under torchrun. Protocols `custom`,
`release` and `adaptive`; `python -m clipure_core.evaluate compare A B` puts two runs side by
side."""

from .compare import compare_runs, load_run
from .config import EvalConfig
from .data import DataUnavailableError, EvalDataset, load_dataset
from .protocols import PROTOCOLS
from .runner import Outcome, run_evaluation
from .stats import mcnemar_exact, wilson_interval

__all__ = [
    "PROTOCOLS",
    "DataUnavailableError",
    "EvalConfig",
    "EvalDataset",
    "Outcome",
    "compare_runs",
    "load_dataset",
    "load_run",
    "mcnemar_exact",
    "run_evaluation",
    "wilson_interval",
]
