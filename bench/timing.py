"""Wall-clock timing shared by the benchmarks."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_ms(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `function()` in milliseconds, after one warm-up call; CUDA work is
    synchronised so that it is counted."""
    function()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def interleaved_medians_ms(
    functions: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median wall time of each function in milliseconds, after one warm-up round, the
    functions taking turns in every round so that a change in the machine's load affects them
    alike (their ratios are then measured in one run). A function may return its own time in
    seconds (a float) to time only part of its work."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for round_ in range(repeats + 1):
        for name, function in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = function()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = result if isinstance(result, float) else time.perf_counter() - start
            if round_:
                samples[name].append(elapsed * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def flags_line(script: str, args: argparse.Namespace) -> str:
    """The command with every flag's value as it ran (defaults included), printed first by
    each benchmark so that a figure copied from its output carries its settings."""
    flags = []
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False:
            flags.append(f"{flag} {value}")
    return f"flags: python bench/{Path(script).name} {' '.join(flags)}".rstrip()


def print_flags(args: argparse.Namespace) -> None:
    """`flags_line` of the running script, on stdout."""
    print(flags_line(sys.argv[0], args), flush=True)
