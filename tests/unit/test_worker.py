"""aegis.worker.run_sync: a call in a real worker thread, its result or exception back in
the task, and a cancellation that waits for the thread instead of abandoning it."""

from __future__ import annotations

import threading

import pytest
import trio

from aegis import worker


async def test_the_call_runs_in_another_thread_and_its_result_comes_back() -> None:
    main = threading.get_ident()
    got = await worker.run_sync(lambda a, b: (threading.get_ident(), a + b), 2, 3)
    assert got[0] != main and got[1] == 5


async def test_an_exception_in_the_thread_is_raised_in_the_task() -> None:
    def boom() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await worker.run_sync(boom)


async def test_a_cancelled_caller_waits_for_the_thread_to_finish() -> None:
    started, release, finished = threading.Event(), threading.Event(), []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.append(True)
        return "done"

    async def let_go() -> None:
        await trio.to_thread.run_sync(started.wait, 10)
        scope.cancel()  # the caller is cancelled while its call runs ...
        await trio.sleep(0.05)
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(let_go)
        with trio.CancelScope() as scope:
            got = await worker.run_sync(slow)
    assert finished == [True] and got == "done"  # ... and still gets what the call returned


async def test_an_already_cancelled_caller_starts_nothing() -> None:
    ran = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await worker.run_sync(ran.append, 1)
    assert scope.cancelled_caught and not ran
