"""Pure helpers of the node driver."""

from __future__ import annotations

from pathlib import Path

from aegis.log import LogIndex, Membership, SnapshotMeta, Term
from aegis.server import _verify_snapshot_file
from aegis.state import StateMachine
from storage import write_snapshot_file


def _snapshot_file(tmp_path: Path) -> Path:
    from aegis.state import Command

    sm = StateMachine()
    for i in range(2000):
        sm.apply(Command.set(f"k{i}", b"v" * 50 + str(i).encode()), i + 1)
    path = tmp_path / "s.snap"
    write_snapshot_file(path, SnapshotMeta(LogIndex(2000), Term(3), Membership.of(["a"])), sm.snapshot_chunks())
    return path


def test_a_received_snapshot_that_verifies_is_kept(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    assert _verify_snapshot_file(path) is None
    assert path.exists()


def test_a_received_snapshot_damaged_in_transit_is_discarded(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    problem = _verify_snapshot_file(path)
    assert problem and not path.exists()


def test_a_truncated_snapshot_is_discarded(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    assert _verify_snapshot_file(path) and not path.exists()
