"""aegis.failpoints: the AEGIS_FAILPOINTS parser, the actions, and `aegis serve` refusing a bad spec."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from aegis import failpoints
from aegis.failpoints import Action, FailpointError, FailpointSpecError, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    failpoints.configure(None)
    yield
    failpoints.configure(None)


@pytest.mark.parametrize("spec, expected", [
    ("", {}),
    (" ; ", {}),
    ("log-after-fsync=crash", {"log-after-fsync": Action(kind="crash")}),
    ("log-after-fsync=crash@3", {"log-after-fsync": Action(kind="crash", from_hit=3)}),
    ("log-before-fsync=crash;vote-after-persist=sleep(2000)",
     {"log-before-fsync": Action(kind="crash"), "vote-after-persist": Action(kind="sleep", sleep_ms=2000)}),
    (" compact-before = error ; state-after-flush=pause;", {"compact-before": Action(kind="error"),
                                                            "state-after-flush": Action(kind="pause")}),
    ("snapshot-mid-write=sleep(0)@2", {"snapshot-mid-write": Action(kind="sleep", sleep_ms=0, from_hit=2)}),
])
def test_good_specs_parse(spec: str, expected: dict[str, Action]) -> None:
    assert parse(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("log-after-fsync", "is not NAME=ACTION"),
    ("=crash", "is not NAME=ACTION"),
    ("log-after-fsync=", "is not NAME=ACTION"),
    ("log-after-fsnyc=crash", "unknown failpoint 'log-after-fsnyc' (known: log-before-fsync,"),
    ("log-after-fsync=explode", "expected crash, pause, error or sleep(MS)"),
    ("log-after-fsync=sleep", "expected crash"),
    ("log-after-fsync=sleep(-1)", "expected crash"),
    ("log-after-fsync=sleep(1.5)", "expected crash"),
    ("log-after-fsync=crash@", "expected crash"),
    ("log-after-fsync=crash@0", "counts hits from 1"),
    ("log-after-fsync=crash;log-after-fsync=error", "given twice"),
])
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(FailpointSpecError) as err:
        parse(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_spec_arms_nothing() -> None:
    failpoints.configure("compact-before=error")
    with pytest.raises(FailpointSpecError):
        failpoints.configure("compact-before=error;bogus=crash")
    assert failpoints.armed() == {} and not failpoints.enabled()
    failpoints.hit("compact-before")  # no longer armed


def test_unarmed_points_do_nothing() -> None:
    for name in failpoints.POINTS:
        failpoints.hit(name)
    failpoints.configure("compact-before=error")
    failpoints.hit("log-after-fsync")  # another point


def test_error_from_the_nth_hit_on() -> None:
    failpoints.configure("state-after-flush=error@3")
    failpoints.hit("state-after-flush")
    failpoints.hit("state-after-flush")
    for _ in range(2):
        with pytest.raises(FailpointError) as err:
            failpoints.hit("state-after-flush")
        assert isinstance(err.value, OSError) and err.value.errno == 5
        assert "state-after-flush" in str(err.value)


def test_sleep_blocks_the_caller() -> None:
    failpoints.configure("compact-before=sleep(150)")
    t0 = time.monotonic()
    failpoints.hit("compact-before")
    assert time.monotonic() - t0 >= 0.14


def _child(code: str, spec: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as in production
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**env, failpoints.ENV: spec})


def test_crash_exits_137_at_once_without_flushing() -> None:
    # Buffered output and atexit handlers die with the process, as they would under kill -9.
    code = ("import atexit, sys; from aegis import failpoints; atexit.register(print, 'atexit ran'); "
            "sys.stdout.write('buffered'); failpoints.hit('log-after-fsync'); "
            "failpoints.hit('log-after-fsync'); print('survived')")
    done = _child(code, "log-after-fsync=crash@2")
    assert done.returncode == 137
    assert done.stdout == ""
    assert done.stderr == "failpoint log-after-fsync: crash (hit 2)\n"


def test_the_environment_is_parsed_once_at_import() -> None:
    done = _child("from aegis import failpoints; print(sorted(failpoints.armed()))",
                  "log-before-fsync=crash;vote-after-persist=sleep(2000)")
    assert done.stdout.strip() == "['log-before-fsync', 'vote-after-persist']"
    done = _child("from aegis import failpoints; print(failpoints.armed()); failpoints.check()", "oops")
    assert done.stdout.strip() == "{}"
    assert "FailpointSpecError: 'oops' is not NAME=ACTION" in done.stderr


@pytest.mark.parametrize("spec", ["log-after-fsync=boom", "no-such-point=crash"])
def test_serve_refuses_a_bad_spec_with_one_line_and_creates_nothing(tmp_path: Path, spec: str) -> None:
    data = tmp_path / "n1"
    done = subprocess.run([sys.executable, "-m", "aegis.cli", "serve", "--id", "n1", "--listen", "127.0.0.1:0",
                           "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**os.environ, failpoints.ENV: spec})
    assert done.returncode == 2
    assert done.stderr.startswith("aegis serve: AEGIS_FAILPOINTS: ") and done.stderr.count("\n") == 1
    assert not data.exists()


def test_serve_help_lists_every_failpoint() -> None:
    done = subprocess.run([sys.executable, "-m", "aegis.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    for name in failpoints.POINTS:
        assert f"  {name}  " in done.stdout
