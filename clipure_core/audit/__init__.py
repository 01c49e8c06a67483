"""Robustness audit: every threat condition against every model of one photo (or a data set),
the pixel gradients each attacker sees, and the standard sanity checks."""

from .checks import CHECKS, Check
from .conditions import CONDITIONS, UNDEFENDED, Condition
from .gradients import GradientStats
from .result import AuditResult, Cell
from .runner import SQUARE_QUERIES, run_audit

__all__ = [
    "CHECKS",
    "CONDITIONS",
    "SQUARE_QUERIES",
    "UNDEFENDED",
    "AuditResult",
    "Cell",
    "Check",
    "Condition",
    "GradientStats",
    "run_audit",
]
