"""The bridge between the shell's main thread and the trio client's thread.

Theory of operation
-------------------
prompt-toolkit runs its application on asyncio; the Aegis client is trio. Two event loops
cannot share a thread, so each gets its own:

* the **main thread** runs prompt-toolkit (`PromptSession.prompt`), rich output and the
  dashboard's `Live` display. It keeps everything that only the main thread can do: Python
  delivers SIGINT and SIGWINCH there, so Ctrl-C, Ctrl-D, Ctrl-R and terminal resizing
  behave exactly as in any prompt-toolkit program;
* a **trio thread** (`TrioBridge`) runs one `trio.run` for the life of the shell. It owns
  the `AegisClient` and every connection; nothing else touches them, so the client needs
  no locking beyond its own.

The main thread hands work over with `TrioBridge.run(async_fn, *args, timeout=…)`: the call
is started as a task in the trio thread's nursery under its own cancel scope, and the main
thread waits for its `concurrent.futures.Future`. The wait is a loop of short waits, so a
Ctrl-C (KeyboardInterrupt in the main thread) arrives promptly; the bridge then cancels
the task's scope — the client closes a connection interrupted mid-request, so a late reply
is never mistaken for the next one — waits briefly for it to unwind and re-raises
KeyboardInterrupt for the shell to turn into "interrupted".

Why not trio guest mode on prompt-toolkit's asyncio loop: prompt-toolkit starts and stops
its loop for every `prompt()` call, and the dashboard and the pager run outside it; a guest
run would have to outlive several host loops. A dedicated thread is the simpler contract:
one trio run, started once, closed once (`close()` cancels everything and joins).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import trio

__all__ = ["TrioBridge", "BridgeClosedError"]

T = TypeVar("T")

_POLL: Final = 0.05  # how often the main thread wakes to notice a KeyboardInterrupt
_CANCEL_GRACE: Final = 2.0  # how long an interrupted task may take to unwind


class BridgeClosedError(RuntimeError):
    """The trio thread is gone (closed, or it crashed)."""


class TrioBridge:
    """One trio event loop in a daemon thread; run coroutines on it from the main thread."""

    def __init__(self, name: str = "aegis-shell-trio") -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._crash is not None:
            raise BridgeClosedError(f"the trio thread failed to start: {self._crash!r}")

    # -- the trio side

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - recorded and reported to callers
            self._crash = exc
        finally:
            self._token = None
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()
        self._nursery = None

    # -- the main-thread side

    @property
    def alive(self) -> bool:
        return self._token is not None and self._thread.is_alive()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        token = self._token
        if token is None:
            raise BridgeClosedError("the shell's network thread has stopped")
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            raise BridgeClosedError("the shell's network thread has stopped") from None

    def submit(
        self, async_fn: Callable[..., Awaitable[T]], *args: Any
    ) -> tuple[concurrent.futures.Future[T], trio.CancelScope]:
        """Start `async_fn(*args)` in the trio thread; its future and its cancel scope."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()

        async def runner() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                with scope:
                    result = await async_fn(*args)
            except trio.Cancelled:
                # The whole run is shutting down (close()): tell the waiter, let it unwind.
                future.set_exception(BridgeClosedError("the shell is shutting down"))
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                future.set_exception(exc)
                return
            if scope.cancelled_caught:
                future.set_exception(KeyboardInterrupt())
            else:
                future.set_result(result)

        def spawn() -> None:
            nursery = self._nursery
            if nursery is None:
                future.set_exception(BridgeClosedError("the shell's network thread has stopped"))
                return
            nursery.start_soon(runner)

        self._call_soon(spawn)
        return future, scope

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
        """Run `async_fn(*args)` in the trio thread and return its result (or raise its error).

        KeyboardInterrupt while waiting cancels the task and is re-raised. `timeout` bounds
        the wait (`TimeoutError` after cancelling); normally the client's own deadlines end
        the call first.
        """
        future, scope = self.submit(async_fn, *args)
        waited = 0.0
        try:
            while True:
                try:
                    return future.result(timeout=_POLL)
                except concurrent.futures.TimeoutError:
                    waited += _POLL
                    if timeout is not None and waited >= timeout:
                        self._cancel(future, scope)
                        raise TimeoutError(f"no answer within {timeout:g}s") from None
        except KeyboardInterrupt:
            self._cancel(future, scope)
            raise

    def cancel(self, scope: trio.CancelScope) -> None:
        """Cancel a task started with `submit` (no-op once the bridge is closed)."""
        try:
            self._call_soon(scope.cancel)
        except BridgeClosedError:
            pass

    def _cancel(self, future: concurrent.futures.Future[Any], scope: trio.CancelScope) -> None:
        try:
            self._call_soon(scope.cancel)
        except BridgeClosedError:
            return
        try:
            future.exception(timeout=_CANCEL_GRACE)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            pass
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting for the unwind

    def close(self) -> None:
        """Cancel whatever still runs in the trio thread and join it."""
        stop = self._stop
        if stop is not None and self._token is not None:
            try:
                self._call_soon(stop.set)
            except BridgeClosedError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> TrioBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
