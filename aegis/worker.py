"""A store call in a worker thread, for the Raft driver's hot path.

`trio.to_thread.run_sync` costs about 107 µs of CPU per call here, where handing a
function to one of trio's cached threads and waking the task with its result costs about
79 (`python bench/thread_bench.py`). The difference is what it does for every call: it
names the OS thread before the call and back after it (`pthread_setname_np`, which on
Linux writes `/proc/self/task/TID/comm`), copies the context, formats two names, and takes
a slot of the default `CapacityLimiter`. The leader's log write goes through a thread
once per Ready, so those costs were paid once per write at one client.

`run_sync` keeps what the driver relies on: the function's result or exception comes back
to the calling task, and a cancellation waits for the thread to finish (as
`abandon_on_cancel=False` does: a log write is never abandoned halfway). It takes no limiter
slot, so it is only for callers that run one call at a time. The driver's log write is the
one that uses it: state flushes and compactions are rare enough to keep `trio.to_thread`,
and anything a client can start many of must keep it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, TypeVar

import outcome
import trio

_T = TypeVar("_T")


async def run_sync(fn: Callable[..., _T], *args: object) -> _T:
    """`fn(*args)` in a worker thread; its result, or its exception raised here."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    reschedule = trio.lowlevel.reschedule

    def deliver(result: outcome.Outcome[_T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the run ended: nobody waits for it
            token.run_sync_soon(reschedule, task, result)

    trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver)
    result: _T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
    return result
