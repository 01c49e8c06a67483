"""The processes of a run: one alone, or the ranks torchrun started (gloo on CPU, NCCL on GPUs).

Only small Python objects travel between ranks (which batches are done, finished batch
records), so a rank never waits on another during the batch loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import InputError
from ..loading import resolve_device

# Ranks wait for each other only at start and at the end; after a resume one rank may have
# hours of batches left while the others are done, so the wait must not time out early.
WAIT_TIMEOUT = timedelta(days=7)
T = TypeVar("T")


class Cluster:
    """Rank, world size and the few collectives a run needs; trivial for one process."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def gather(self, value: T) -> list[T] | None:
        """Every rank's `value` on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [value]
        values: list | None = [None] * self.world_size if self.is_root else None
        dist.gather_object(value, values, dst=0)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def root_first(self, function: Callable[[], T]) -> T:
        """Run `function` on rank 0, then on the others (downloads and disk caches once)."""
        if self.is_root:
            result = function()
            self.barrier()
            return result
        self.barrier()
        return function()

    def check_all(self, error: str | None) -> None:
        """Raise `InputError` on every rank if any rank reported an error message."""
        errors = [message for message in self.all_gather(error) if message]
        if errors:
            raise InputError(errors[0])

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def start_cluster(device: str | None = None) -> tuple[Cluster, torch.device]:
    """Join the torchrun world if there is one (else a one-process cluster), and pick this
    rank's device: `device`, or CUDA when present, as cuda:LOCAL_RANK (modulo the GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    if world_size <= 1:
        return Cluster(), resolved
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    own_gpu = resolved.type == "cuda" and local_world <= torch.cuda.device_count()
    if own_gpu:
        torch.cuda.set_device(resolved)
    # NCCL needs one GPU per rank; ranks that share a GPU (or use the CPU) talk over gloo.
    dist.init_process_group("nccl" if own_gpu else "gloo", timeout=WAIT_TIMEOUT)
    return Cluster(rank, world_size, local_rank), resolved
