"""Queued jobs that really stop: one cancel flag per job, set by every way a job can end early.

gradio runs a sync handler in a worker thread and, when the job is cancelled (the Stop button's
`cancels=`, a client's `/cancel`, e.g. gradio_client's `job.cancel()`, or the server
shutting down), it cancels only the asyncio task awaiting that thread: the thread itself runs
on, unseen, and the queue hands its slot to the next job. When the browser closes, gradio only
marks the job's event as no longer alive. So the handlers here are async: they run the work in
a worker thread of their own, set the job's flag when their task is cancelled, and keep the
queue slot until the work has noticed the flag and returned. The flag also reads as set once
gradio has marked the event's client gone. The attack checks the flag at every model query.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import gradio as gr
from gradio.context import LocalContext

from .gpu import zero_gpu
from .service import Progress

T = TypeVar("T")


class JobFlag(threading.Event):
    """A job's cancel flag: `set()` by Stop or by cancellation; it also reads as set once
    `client_gone()` says the job's client has disconnected."""

    def __init__(self, client_gone: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self._client_gone = client_gone

    def is_set(self) -> bool:
        if not super().is_set() and self._client_gone is not None and self._client_gone():
            self.set()
        return super().is_set()


def current_job_flag() -> JobFlag:
    """The flag of the gradio event being processed (call it in a handler, in the event loop).

    gradio marks an event `alive = False` when its client's event stream disconnects (browser
    closed, network lost). That mark lives on gradio's queue (no public API): when it cannot
    be found, the flag covers Stop and cancellation only.
    """
    blocks = LocalContext.blocks.get(None)
    event_id = LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None) or {}
    event = events.get(event_id) if event_id else None
    if event is None or not hasattr(event, "alive"):
        return JobFlag()
    return JobFlag(lambda: not event.alive)


async def in_worker(work: Callable[[], T], flag: threading.Event, wait: bool = True) -> T:
    """`work()` in a worker thread. If this task is cancelled meanwhile, set `flag` and (with
    `wait`) let the cancellation through only once `work` has returned, so the queue does not
    start the next job while this one still runs."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    task.add_done_callback(_retrieve)  # its outcome may go unread after a cancellation
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        flag.set()
        if wait:
            await asyncio.wait([task])
        raise


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def cancellable(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """A gradio handler with `function`'s inputs (less `cancel`) that calls
    `function(..., cancel=flag)` in a worker thread, `flag` being the job's JobFlag.

    Under ZeroGPU the work runs in another process that the flag cannot reach; a cancelled
    job then lets go at once, as gradio does by itself.
    """
    signature = inspect.signature(function)
    inputs = [p for name, p in signature.parameters.items() if name != "cancel"]

    @functools.wraps(function)
    async def handler(*args: Any, **kwargs: Any) -> T:
        flag = current_job_flag()
        work = functools.partial(function, *args, cancel=flag, **kwargs)
        return await in_worker(work, flag, wait=not zero_gpu())

    handler.__signature__ = signature.replace(parameters=inputs)  # what gradio inspects
    return handler


BUSY_MESSAGE = (
    "The playground is busy: {waiting} requests are already waiting, as many as it queues. "
    "Please try again in a minute."
)


def explain_full_queue(demo: Any, message: str = BUSY_MESSAGE) -> None:
    """Say why a request was turned away when the queue is full.

    gradio answers HTTP 503 with 'Queue is full. Max size is N and size is N.'; raw API
    callers see that detail, and here it becomes `message` ({waiting} = the queue's size).
    The browser shows gradio's own 'This application is currently busy. Please try again.',
    and gradio_client raises QueueError('Queue is full! Please try again.'). The detail comes
    from the queue's `push` (no public hook): if that is missing, gradio's text stays.
    """
    queue = getattr(demo, "_queue", None)
    push = getattr(queue, "push", None)
    if push is None:
        return

    @functools.wraps(push)
    async def push_or_busy(*args: Any, **kwargs: Any) -> tuple:
        accepted, detail, state = await push(*args, **kwargs)
        if state == "queue_full":
            detail = message.format(waiting=queue.max_size)
        return accepted, detail, state

    queue.push = push_or_busy


class StopRegistry:
    """Cooperative Stop: the running job checks its session's event between model queries."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str, event: threading.Event | None = None) -> threading.Event:
        """Register the running job's cancel flag (a new one if `event` is None)."""
        with self._lock:
            event = self._events[session] = event or threading.Event()
            return event

    def stop(self, session: str) -> None:
        with self._lock:
            if session in self._events:
                self._events[session].set()

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


def reporter(progress: gr.Progress | None, interval_s: float = 0.2) -> Progress | None:
    """gradio's progress bar as an `on_progress(done, total, description)` callback, updated
    at most every `interval_s` (an update per model query would flood the page)."""
    if progress is None:
        return None
    last = [float("-inf")]

    def report(done: int, total: int, description: str) -> None:
        now = time.monotonic()
        if now - last[0] >= interval_s or done >= total:
            last[0] = now
            progress((done, total), desc=description, unit="queries")

    return report


def session_of(http: gr.Request | None) -> str:
    return (http.session_hash if http is not None else None) or "anonymous"
