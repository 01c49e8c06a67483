"""Every failure a user can meet becomes a readable message; the log gets the outcome only."""

from __future__ import annotations

import functools
import gc
import logging
import time
import traceback
from collections.abc import Callable

import gradio as gr
import torch

from clipure_core import InputError, WeightsUnavailableError

from .service import Cancelled

LOGGER = logging.getLogger("app.ui")
OUT_OF_MEMORY = (
    "Out of memory: try fewer attack steps, fewer EOT samples, fewer labels or a smaller model."
)
UNEXPECTED = (
    "Something went wrong on the server (it has been logged). Please try again, perhaps with "
    "other settings."
)


def readable(message: str) -> gr.Error:
    """The error the user sees. gradio prints no traceback of it: its message may quote the
    user's input, and the server log holds no user data."""
    return gr.Error(message, print_exception=False)


def free_memory() -> None:
    """Give memory back after an out-of-memory error: collect the failed request's tensors,
    then return PyTorch's cached CUDA blocks (a no-op where CUDA was never initialised)."""
    gc.collect()
    torch.cuda.empty_cache()


def friendly_errors(function: Callable) -> Callable:
    """Turn every failure into a readable gr.Error. The server log gets the outcome, the time
    taken and, for unexpected errors, the exception's type and stack (code locations only,
    never its message nor the request's labels or image)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except Cancelled:
            _log_outcome(function, "stopped", started)
            raise readable("Stopped.") from None
        except (InputError, WeightsUnavailableError) as error:
            _log_outcome(function, f"refused ({type(error).__name__})", started)
            raise readable(str(error)) from None
        except torch.OutOfMemoryError:
            pass  # handled below, out of this block: its traceback holds the request's tensors
        except Exception as error:
            stack = "".join(traceback.format_tb(error.__traceback__))
            outcome = f"failed ({type(error).__name__}; its message is not logged)"
            _log_outcome(function, outcome, started, logging.ERROR, stack)
            raise readable(UNEXPECTED) from None
        _log_outcome(function, "out of memory", started, logging.WARNING)
        free_memory()
        raise readable(OUT_OF_MEMORY)

    return wrapper


def _log_outcome(
    function: Callable, outcome: str, started: float, level: int = logging.INFO, stack: str = ""
) -> None:
    """One log line per request that did not finish: handler, outcome, time (and a stack)."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    LOGGER.log(
        level,
        "%s: %s after %.0f ms%s",
        function.__name__,
        outcome,
        elapsed_ms,
        stack and ":\n" + stack,
    )
