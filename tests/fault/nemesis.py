"""The nemesis: seeded faults against a `LocalCluster` with proxies, one at a time.

Every choice (the order of the kinds, targets, durations, how long the cluster is left
alone in between) comes from one `random.Random(seed)`; kinds are drawn as shuffled rounds,
so each enabled kind comes up once in every round of len(kinds) faults. Which node is the
leader is asked at the time, so a fault aimed at "the leader" is replayed at whichever
node leads then.

Kinds:
* kill    — SIGKILL a node (the leader half the time), restart it after the hold;
* pause   — SIGSTOP a node (the leader most of the time), SIGCONT after the hold;
* isolate — cut every link to and from one node (often the leader);
* split   — cut the cluster into a majority and a minority (the leader on either side);
* drop    — reset peer connections: random links, again and again, during the hold;
* delay   — delay the peer traffic of one node, or of every link, by 50-400 ms.

Every fault is undone at the end of its hold; `heal_all()` undoes whatever is left.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time

from tests.e2e.harness import LocalCluster, info_at

KINDS = ("kill", "pause", "isolate", "split", "drop", "delay")


@dataclasses.dataclass
class Event:
    at: float  # seconds since the run started
    kind: str
    detail: str
    seconds: float


class Nemesis(threading.Thread):
    def __init__(self, cluster: LocalCluster, kinds: list[str], seed: int, stop: threading.Event, t0: float, *,
                 hold: tuple[float, float] = (1.0, 3.0), quiet: tuple[float, float] = (0.5, 1.5),
                 log: bool = True) -> None:
        super().__init__(name="nemesis", daemon=True)
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(KINDS)}")
        self.cluster = cluster
        self.kinds = list(kinds)
        self.rng = random.Random(seed)
        self.stop = stop
        self.t0 = t0
        self.hold = hold
        self.quiet = quiet
        self.log = log
        self.events: list[Event] = []
        self.counts: dict[str, int] = {k: 0 for k in self.kinds}
        self.dropped = 0  # connections reset by `drop`
        self.error: BaseException | None = None
        self.crashed: list[str] = []  # nodes found dead that the nemesis did not kill
        self._paused: set[str] = set()
        self._dead: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def leader(self) -> str | None:
        """The node that says it leads with the highest term, asked with a short timeout."""
        best: tuple[int, str] | None = None
        for nid, node in self.cluster.nodes.items():
            if not node.alive() or nid in self._paused:
                continue
            try:
                info = info_at(node.port, timeout=0.5)
            except Exception:  # noqa: BLE001 - a node that cannot answer leads nothing we can use
                continue
            if info.get("role") == "leader":
                term = int(info.get("term", "0") or 0)
                if best is None or term > best[0]:
                    best = (term, nid)
        return best[1] if best else None

    def target(self, leader_bias: float) -> str:
        ids = sorted(self.cluster.nodes)
        if self.rng.random() < leader_bias:
            lead = self.leader()
            if lead is not None:
                return lead
        return self.rng.choice(ids)

    def _say(self, text: str) -> None:
        if self.log:
            print(f"[nemesis {time.monotonic() - self.t0:7.2f}s] {text}", flush=True)

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            round_: list[str] = []
            while not self.stop.is_set():
                self._sleep(self.rng.uniform(*self.quiet))
                if self.stop.is_set():
                    break
                self.check_crashed()
                if not round_:
                    round_ = list(self.kinds)
                    self.rng.shuffle(round_)
                kind = round_.pop(0)
                hold = self.rng.uniform(*self.hold)
                start = time.monotonic()
                detail = getattr(self, f"_{kind}")(hold)
                self.counts[kind] += 1
                self.events.append(Event(start - self.t0, kind, detail, time.monotonic() - start))
        except BaseException as exc:  # noqa: BLE001 - reported by the runner
            self.error = exc
        finally:
            self.heal_all()

    def _hold(self, seconds: float) -> None:
        # A fault always runs its whole hold, even if the run ends meanwhile: the CI
        # counts on each fault being a real one.
        time.sleep(seconds)

    def _kill(self, hold: float) -> str:
        nid = self.target(0.5)
        self._say(f"kill -9 {nid} for {hold:.1f}s")
        self.cluster.kill(nid)
        self._dead.add(nid)
        self._hold(hold)
        self.cluster.start(nid, wait=False)
        self._dead.discard(nid)
        return f"kill -9 {nid}, restarted after {hold:.1f}s"

    def _pause(self, hold: float) -> str:
        nid = self.target(0.7)
        self._say(f"SIGSTOP {nid} for {hold:.1f}s")
        self.cluster.pause(nid)
        self._paused.add(nid)
        self._hold(hold)
        self.cluster.resume(nid)
        self._paused.discard(nid)
        return f"SIGSTOP {nid} for {hold:.1f}s"

    def _isolate(self, hold: float) -> str:
        nid = self.target(0.5)
        self._say(f"isolate {nid} for {hold:.1f}s")
        self.cluster.isolate(nid)
        self._hold(hold)
        self.cluster.heal()
        return f"isolate {nid} for {hold:.1f}s"

    def _split(self, hold: float) -> str:
        ids = sorted(self.cluster.nodes)
        self.rng.shuffle(ids)
        lead = self.leader()
        minority_size = (len(ids) - 1) // 2 or 1
        if lead is not None and self.rng.random() < 0.5:  # the leader on the minority side
            ids.remove(lead)
            ids.insert(0, lead)
        minority, majority = sorted(ids[:minority_size]), sorted(ids[minority_size:])
        self._say(f"split {minority} | {majority} for {hold:.1f}s")
        self.cluster.partition(minority, majority)
        self._hold(hold)
        self.cluster.heal()
        return f"split {minority} | {majority} for {hold:.1f}s"

    def _drop(self, hold: float) -> str:
        self._say(f"drop peer connections for {hold:.1f}s")
        end = time.monotonic() + hold
        links: list[str] = []
        while time.monotonic() < end:
            a, b = self.rng.choice(sorted(self.cluster.links))
            self.dropped += self.cluster.links[(a, b)].drop()
            links.append(f"{a}>{b}")
            time.sleep(self.rng.uniform(0.05, 0.4))
        return f"dropped {len(links)} links over {hold:.1f}s"

    def _delay(self, hold: float) -> str:
        seconds = self.rng.uniform(0.05, 0.4)
        if self.rng.random() < 0.5:
            nid = self.target(0.5)
            chosen = [link for link in sorted(self.cluster.links) if nid in link]
            what = f"{nid}'s links"
        else:
            chosen = sorted(self.cluster.links)
            what = "every link"
        self._say(f"delay {what} by {seconds * 1000:.0f} ms for {hold:.1f}s")
        for a, b in chosen:
            self.cluster.delay_link(a, b, seconds)
        self._hold(hold)
        for a, b in chosen:
            self.cluster.delay_link(a, b, 0.0)
        return f"delay {what} by {seconds * 1000:.0f} ms for {hold:.1f}s"

    def check_crashed(self) -> None:
        """Note (and restart) any node that exited without being killed: a crash."""
        for nid, node in sorted(self.cluster.nodes.items()):
            if nid not in self._dead and node.proc is not None and node.proc.poll() is not None:
                at = time.monotonic() - self.t0
                self.crashed.append(f"{nid} exited with status {node.proc.returncode} (found at {at:.1f}s)")
                self._say(f"{nid} CRASHED (exit status {node.proc.returncode}); restarting it")
                self.cluster.start(nid, wait=False)

    def heal_all(self) -> None:
        """Undo every fault: resume paused nodes, restart dead ones, reconnect and undelay links."""
        for nid in sorted(self.cluster.nodes):
            self.cluster.resume(nid)
        self._paused.clear()
        for nid in sorted(self._dead):
            if not self.cluster.nodes[nid].alive():
                self.cluster.start(nid, wait=False)
        self._dead.clear()
        self.check_crashed()
        self.cluster.heal()
