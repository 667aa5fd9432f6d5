"""`aegis …`: serve a node, run a local cluster, ask a node for its status.

    aegis serve --id n1 --listen 127.0.0.1:7001 --data data/n1 \\
                --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003 [--metrics 127.0.0.1:9101]
    aegis up [--nodes 3] [--data data] [--port 7001] [--metrics-port 9101]
    aegis status --addr 127.0.0.1:7001 [--json]
    aegis status --cluster --addr HOST:PORT[,HOST:PORT…] [--json]
    aegis member list | add ID HOST:PORT [--learner] | promote ID | remove ID [--yes]   [--addr …] [--json]
    aegis leader transfer ID [--addr …] [--json]
    aegis health --addr HOST:PORT[,HOST:PORT…] [--json]      (exit 0 healthy, 1 degraded, 2 no quorum)
    aegis snapshot save FILE [--addr HOST:PORT] | status FILE | restore FILE --data DIR --id ID [--peers …]
    aegis repair-term --data DIR [--term T]   (a term past the limit: every node at once)

Flags are a contract (DESIGN.md §3): extend, never rename.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import ssl

    from .tls import TlsConfig

from .logs import FORMATS, set_context
from .logs import setup as setup_logging

EXIT_USAGE = 2
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _positive_int(raw: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _non_negative(raw: str) -> float:
    try:
        x = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {raw}")
    return x


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number in {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, p


def _parse_peers(text: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        nid, sep, addr = item.partition("=")
        if not sep or not nid or not addr:
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT in --peers, got {item!r}")
        _parse_listen(addr)
        if nid in peers:
            raise argparse.ArgumentTypeError(f"node {nid!r} is named twice in --peers")
        peers[nid] = addr
    return peers


def _parse_addrs(text: str) -> list[str]:
    from .ops import parse_addrs

    try:
        return parse_addrs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cluster_options(wait: bool = True) -> argparse.ArgumentParser:
    """--addr/--token/--json (and --wait) shared by the commands that operate a cluster."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", type=_parse_addrs, default=["127.0.0.1:7001"], metavar="HOST:PORT[,…]",
                        help="any node(s) of the cluster; the leader is found from them (default 127.0.0.1:7001)")
    common.add_argument("--token", default=os.environ.get("AEGIS_TOKEN"), help="AUTH token (also AEGIS_TOKEN)")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")
    if wait:
        common.add_argument("--wait", type=float, default=5.0,
                            help="seconds to keep looking for a leader while there is none (default 5)")
    return common


def _failpoints_epilog() -> str:
    from . import failpoints

    width = max(len(name) for name in failpoints.POINTS)
    rows = "\n".join(f"  {name:<{width}}  {where}" for name, where in failpoints.POINTS.items())
    return (f"failpoints (testing only): {failpoints.ENV}=\"NAME=ACTION[;NAME=ACTION...]\", ACTION one of\n"
            "crash (exit 137 at once, like kill -9), sleep(MS), pause (block until killed) or error\n"
            "(an injected EIO), each optionally @N (from the Nth hit on). Points:\n" + rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aegis", description="Aegis: a Raft-replicated, durable key-value server.")
    p.add_argument("--log-level", default=os.environ.get("AEGIS_LOG_LEVEL", "info").lower(),
                   choices=LOG_LEVELS, help="logging level (stderr; also AEGIS_LOG_LEVEL)")
    p.add_argument("--log-format", default=os.environ.get("AEGIS_LOG_FORMAT", "text").lower(), choices=FORMATS,
                   help="text (default) or json: one JSON object per line (also AEGIS_LOG_FORMAT)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run one node", epilog=_failpoints_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--id", required=True, help="this node's id (must appear in --peers for a cluster)")
    s.add_argument("--listen", required=True, type=_parse_listen, help="HOST:PORT for clients and peers")
    s.add_argument("--data", required=True, help="data directory (created if missing)")
    s.add_argument("--peers", type=_parse_peers, default={},
                   help="ID=HOST:PORT,… of every member, this node included (omit for a cluster of one)")
    s.add_argument("--cluster", default="aegis", help="cluster name (default: aegis)")
    s.add_argument("--join", action="store_true",
                   help="a new member of a running cluster: wait for `MEMBER ADD` on the leader "
                        "instead of forming a cluster from --peers (only matters for an empty --data)")
    s.add_argument("--token", default=os.environ.get("AEGIS_TOKEN"),
                   help="require AUTH with this token (also AEGIS_TOKEN); also the peer secret "
                        "when there is no secret file")
    s.add_argument("--secret-file", default=None,
                   help="the cluster secret peers prove by HMAC (default: DATA/cluster.secret if present, "
                        "else --token; `aegis up` writes one)")
    s.add_argument("--tls-cert", default=None, help="TLS certificate (PEM) for clients and peers")
    s.add_argument("--tls-key", default=None, help="its private key (PEM)")
    s.add_argument("--tls-ca", default=None,
                   help="CA (PEM) that every peer's certificate, and any client certificate, must chain to")
    s.add_argument("--tls-verify-clients", action="store_true",
                   help="with TLS: every client must present a certificate signed by --tls-ca")
    s.add_argument("--tick-ms", type=float, default=50.0, help="Raft tick length in ms (default 50)")
    s.add_argument("--election-ticks", type=int, default=10,
                   help="minimum election timeout in ticks (randomised up to 2x; default 10)")
    s.add_argument("--heartbeat-ticks", type=int, default=2, help="heartbeat interval in ticks (default 2)")
    s.add_argument("--snapshot-threshold", type=int, default=10_000,
                   help="take a snapshot after this many applied entries (default 10000)")
    s.add_argument("--request-timeout", type=float, default=5.0, help="seconds before -TIMEOUT (default 5)")
    s.add_argument("--commit-notice-ms", type=_non_negative, default=2.0, metavar="MS",
                   help="a leader tells followers a new commit index with its next entries, or after "
                        "this long without any (default 2; 0: at once)")
    s.add_argument("--max-clients", type=_positive_int, default=10_000,
                   help="connections open at once, silent ones included; one more gets "
                        "-ERR max number of clients reached and is closed (default 10000; peers always pass)")
    s.add_argument("--client-buffer-mb", type=_positive_int, default=256,
                   help="MiB all clients together may hold in unfinished requests; a connection that "
                        "would pass it gets -ERR and is closed (default 256; 64 KiB each before AUTH)")
    s.add_argument("--max-map-mb", type=_positive_int, default=None, metavar="N",
                   help="cap each LMDB map (the log's, the state's) at N MiB; writes get -DISKFULL "
                        "while less than an eighth is free (default: no cap but the disk)")
    s.add_argument("--first-byte-timeout", type=float, default=60.0, metavar="S",
                   help="close a connection that sends nothing for S seconds after connecting (default 60); "
                        "such connections count towards --max-clients meanwhile")
    s.add_argument("--keys-limit", type=_positive_int, default=10_000,
                   help="KEYS refuses to examine more keys than this; SCAN has no limit (default 10000)")
    s.add_argument("--range-limit", type=_positive_int, default=10_000,
                   help="most keys one RANGE/PREFIX reply returns (default 10000)")
    s.add_argument("--feed-history", type=int, default=100_000,
                   help="changes kept on disk so CHANGES ... FROM can resume (default 100000; 0: none)")
    s.add_argument("--session-timeout", type=float, default=3600.0,
                   help="seconds a client session (SESSION OPEN) lives without a call, in log time "
                        "(default 3600; the leader's value when the session opens counts)")
    s.add_argument("--max-sessions", type=_positive_int, default=10_000,
                   help="client sessions kept at most; opening one more expires the oldest (default 10000)")
    s.add_argument("--session-results", type=_positive_int, default=256,
                   help="results one session keeps for retries (default 256)")
    s.add_argument("--zstd-dict", choices=["off", "auto"], default="auto",
                   help="zstd dictionaries trained by the leader and shipped through the log, so small "
                        "values are stored at about a third of their size (default auto)")
    s.add_argument("--zstd-dict-train-after", type=_positive_int, default=5_000, metavar="N",
                   help="values written before the leader trains the first dictionary (default 5000)")
    s.add_argument("--fsync", choices=["always", "never"], default="always",
                   help="'never' is UNSAFE: acknowledged writes can be lost on a crash (benchmarks only)")
    s.add_argument("--metrics", type=_parse_listen, default=None, metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /health over HTTP here (default: off)")

    u = sub.add_parser("up", help="run a local cluster of separate `aegis serve` processes")
    u.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    u.add_argument("--data", default="data", help="parent data directory (default: data)")
    u.add_argument("--port", type=int, default=7001, help="first port (default 7001)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--cluster", default="aegis")
    u.add_argument("--tick-ms", type=float, default=50.0)
    u.add_argument("--metrics-port", type=int, default=None,
                   help="serve /metrics and /health: node i on this port + i - 1 (default: off)")

    sn = sub.add_parser("snapshot", help="back a cluster up and bring it back")
    snsub = sn.add_subparsers(dest="snapshot_cmd", required=True, metavar="ACTION")
    sv = snsub.add_parser("save", help="take a consistent snapshot from a live cluster into FILE")
    sv.add_argument("file")
    sv.add_argument("--addr", default="127.0.0.1:7001", help="HOST:PORT of any node (default 127.0.0.1:7001)")
    sv.add_argument("--token", default=os.environ.get("AEGIS_TOKEN"))
    sv.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _add_client_tls(sv)
    ss = snsub.add_parser("status", help="verify FILE and print what it holds")
    ss.add_argument("file")
    ss.add_argument("--json", action="store_true")
    sr = snsub.add_parser("restore", help="seed an empty data directory from FILE")
    sr.add_argument("file")
    sr.add_argument("--data", required=True, help="the new node's (empty) data directory")
    sr.add_argument("--id", required=True, help="the new node's id")
    sr.add_argument("--peers", type=_parse_peers, default={},
                    help="ID=HOST:PORT,… of the new cluster (omit for a cluster of one)")
    sr.add_argument("--cluster", default="aegis")
    sr.add_argument("--json", action="store_true", help="one JSON document on stdout")

    st = sub.add_parser("status", help="print a node's status (--cluster: every member's)")
    st.add_argument("--addr", default="127.0.0.1:7001",
                    help="HOST:PORT of any node (default 127.0.0.1:7001); with --cluster, a comma list")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--token", default=os.environ.get("AEGIS_TOKEN"))
    st.add_argument("--cluster", action="store_true",
                    help="one row per member, from each member's own INFO")
    st.add_argument("--max-lag", type=int, default=1000,
                    help="with --cluster: entries a member may be behind and still count as healthy")

    member = _cluster_options()
    me = sub.add_parser("member", help="list and change the membership (finds the leader itself)")
    mesub = me.add_subparsers(dest="member_cmd", required=True, metavar="ACTION")
    mesub.add_parser("list", parents=[member], help="print the members")
    ma = mesub.add_parser("add", parents=[member], help="add a node started with `aegis serve --join`")
    ma.add_argument("node_id", metavar="ID")
    ma.add_argument("address", metavar="HOST:PORT", help="where the members reach the new node")
    ma.add_argument("--learner", action="store_true",
                    help="add it as a non-voting learner (promote it once it has caught up)")
    mp = mesub.add_parser("promote", parents=[member], help="make a learner a voter")
    mp.add_argument("node_id", metavar="ID")
    mr = mesub.add_parser("remove", parents=[member], help="remove a member (asks first on a terminal)")
    mr.add_argument("node_id", metavar="ID")
    mr.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    ld = sub.add_parser("leader", help="leadership")
    ldsub = ld.add_subparsers(dest="leader_cmd", required=True, metavar="ACTION")
    lt = ldsub.add_parser("transfer", parents=[member], help="hand leadership to another voter")
    lt.add_argument("node_id", metavar="ID")

    he = sub.add_parser("health", parents=[_cluster_options(wait=False)],
                        help="ask every member; exit 0 healthy, 1 degraded, 2 no quorum or no answer")
    he.add_argument("--max-lag", type=int, default=1000,
                    help="entries a member may be behind the leader's commit index and count as healthy "
                         "(default 1000)")
    _add_client_tls(st)

    rt = sub.add_parser("repair-term", help="lower a term past the limit (stopped cluster, every node at once)")
    rt.add_argument("--data", required=True, help="the node's data directory (the node must be stopped)")
    rt.add_argument("--term", type=int, default=None,
                    help="the term to set (the same on every node, at least every node's last log term); "
                         "without it, print what the node holds")
    return p


def _add_client_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true", help="connect with TLS (the system's CAs unless --tls-ca)")
    p.add_argument("--tls-ca", default=None, help="CA (PEM) to verify the node against (implies --tls)")
    p.add_argument("--tls-cert", default=None, help="client certificate (PEM), if the node wants one")
    p.add_argument("--tls-key", default=None, help="its private key (PEM)")


def _client_ssl(args: argparse.Namespace) -> "ssl.SSLContext | None":
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    from .tls import client_context

    return client_context(args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks `choices` on what was typed, not on a default from the environment.
    if args.log_level not in LOG_LEVELS:
        parser.error(f"AEGIS_LOG_LEVEL={args.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    if args.log_format not in FORMATS:
        parser.error(f"AEGIS_LOG_FORMAT={args.log_format!r}: expected one of {', '.join(FORMATS)}")
    setup_logging(args.log_level, args.log_format)
    if args.cmd == "serve":
        return cmd_serve(args)
    if args.cmd == "up":
        return cmd_up(args)
    if args.cmd == "status":
        if args.cluster:
            return cmd_status_cluster(args)
        return cmd_status(args)
    if args.cmd in ("member", "leader", "health"):
        return cmd_ops(args)
    if args.cmd == "repair-term":
        from .repair import repair_term

        return repair_term(args.data, args.term)
    if args.cmd == "snapshot":
        from . import backup

        if args.snapshot_cmd == "save":
            return backup.save(args.addr, args.file, args.token, args.json, ssl_context=_client_ssl(args))
        if args.snapshot_cmd == "status":
            return backup.status(args.file, args.json)
        return backup.restore(args.file, args.data, args.id, args.peers, args.cluster, args.json)
    return EXIT_USAGE


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from storage import DataDirInUseError, StorageError, WrongNodeError

    from . import commands as C
    from . import failpoints
    from .peerauth import SecretFileError
    from .raft import StoredTermError
    from .config import ServerConfig
    from .server import MetricsListenError, Node
    from .tls import TlsConfigError

    try:
        failpoints.check()
    except failpoints.FailpointSpecError as exc:
        print(f"aegis serve: {failpoints.ENV}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = args.listen
    peers: dict[str, str] = dict(args.peers)
    if peers and args.id not in peers:
        print(f"aegis serve: --id {args.id} does not appear in --peers ({', '.join(peers)})", file=sys.stderr)
        return EXIT_USAGE
    if args.election_ticks <= args.heartbeat_ticks:
        print("aegis serve: --election-ticks must be larger than --heartbeat-ticks", file=sys.stderr)
        return EXIT_USAGE
    if args.metrics is not None and args.metrics[1] != 0 and args.metrics == (host, port):
        print(f"aegis serve: --metrics {host}:{port} is the --listen address; give it a port of its own",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.first_byte_timeout > 0:
        print("aegis serve: --first-byte-timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    if args.fsync == "never":
        logging.getLogger("aegis").warning("--fsync never: UNSAFE, acknowledged writes can be lost on a crash")
    try:
        secret, tls = _serve_security(args)
    except (SecretFileError, TlsConfigError) as exc:
        print(f"aegis serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = ServerConfig(
        node_id=args.id, host=host, port=port, data_dir=args.data, peers=peers, cluster=args.cluster,
        token=args.token, secret=secret, tls=tls, tick_ms=args.tick_ms,
        election_ticks=(args.election_ticks, 2 * args.election_ticks), heartbeat_ticks=args.heartbeat_ticks,
        snapshot_threshold=args.snapshot_threshold, request_timeout=args.request_timeout,
        commit_notice_ms=args.commit_notice_ms,
        max_clients=args.max_clients, client_buffer_bytes=args.client_buffer_mb << 20,
        max_map_bytes=args.max_map_mb << 20 if args.max_map_mb is not None else None,
        first_byte_timeout=args.first_byte_timeout, fsync=args.fsync == "always", join=args.join,
        keys_limit=args.keys_limit, range_limit=args.range_limit, feed_history=max(0, args.feed_history),
        limits=C.CommandLimits(session_timeout_ms=max(1, int(args.session_timeout * 1000)),
                               max_sessions=args.max_sessions, session_results=args.session_results),
        metrics=args.metrics,
        zstd_dict=args.zstd_dict, zstd_dict_train_after=max(64, args.zstd_dict_train_after),
    )

    async def run() -> None:
        node = Node(cfg)
        # One process, one node: lines that do not name a node get this one's id and term.
        set_context(cfg.node_id, lambda: node.raft.term if hasattr(node, "raft") else None)
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for sig in signals:
                        logging.getLogger("aegis").info("received %s, shutting down", signal.Signals(sig).name)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(stop_on_signal)
            await nursery.start(node.serve)
            # Everything built so far lives as long as the process: keep the cyclic garbage
            # collector from walking it again and again, and let it run less often (a write
            # allocates a few short-lived objects, none of them cyclic).
            gc.freeze()
            gc.set_threshold(50_000, 50, 100)

    try:
        try:
            trio.run(run)
        except BaseExceptionGroup as group:
            # trio's nurseries wrap errors in groups; a single leaf is the real story.
            leaves = list(_leaves(group))
            if len(leaves) == 1 and isinstance(leaves[0], Exception):
                raise leaves[0] from None
            raise
    except WrongNodeError as exc:
        print(f"aegis serve: {exc}", file=sys.stderr)
        return 3
    except StoredTermError as exc:
        print(f"aegis serve: {exc}", file=sys.stderr)
        return 6
    except DataDirInUseError as exc:
        print(f"aegis serve: {exc}", file=sys.stderr)
        return 3
    except StorageError as exc:
        print(f"aegis serve: storage error: {exc}", file=sys.stderr)
        return 4
    except failpoints.FailpointError as exc:
        print(f"aegis serve: storage error: {exc.strerror}", file=sys.stderr)
        return 4
    except MetricsListenError as exc:
        print(f"aegis serve: {exc}", file=sys.stderr)
        return 5
    except OSError as exc:
        print(f"aegis serve: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 5
    return 0


def _serve_security(args: argparse.Namespace) -> "tuple[bytes | None, TlsConfig | None]":
    """The peer secret and TLS settings of `aegis serve` (SecretFileError, TlsConfigError)."""
    from .peerauth import resolve_secret
    from .tls import TlsConfig, TlsConfigError

    secret, source, warnings = resolve_secret(args.secret_file, args.data, args.token)
    for warning in warnings:
        logging.getLogger("aegis").warning("%s", warning)
    if secret is not None:
        logging.getLogger("aegis").info("peers prove the cluster secret from %s", source)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca or args.tls_verify_clients:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise TlsConfigError("TLS needs --tls-cert, --tls-key and --tls-ca together (peers verify each "
                                 "other against the CA)")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_ca, args.tls_verify_clients)
        tls.server_context()  # fail now, with the file's name, rather than at the first connection
        tls.peer_context()
    return secret, tls


def _leaves(exc: BaseException) -> "list[BaseException]":
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


# ---------------------------------------------------------------------- up
def cmd_up(args: argparse.Namespace) -> int:
    n = args.nodes
    if not 1 <= n <= 7:
        print("aegis up: --nodes must be between 1 and 7", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.port <= 65535 - n:
        print("aegis up: --port out of range", file=sys.stderr)
        return EXIT_USAGE
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535 - n:
        print("aegis up: --metrics-port out of range", file=sys.stderr)
        return EXIT_USAGE
    ids = [f"n{i + 1}" for i in range(n)]
    addrs = {nid: f"{args.host}:{args.port + i}" for i, nid in enumerate(ids)}
    peers = ",".join(f"{nid}={a}" for nid, a in addrs.items())
    data = Path(args.data)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    from .peerauth import SecretFileError, ensure_cluster_secret

    try:
        created = ensure_cluster_secret([data / nid for nid in ids])
    except SecretFileError as exc:
        print(f"aegis up: {exc}", file=sys.stderr)
        return 1
    print(f"Aegis: starting a {n}-node cluster {args.cluster!r} under {data}/"
          + (" (new cluster secret in each node's cluster.secret)" if created else ""))
    for nid in ids:
        cmd = [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", nid,
               "--listen", addrs[nid], "--data", str(data / nid), "--peers", peers,
               "--cluster", args.cluster, "--tick-ms", str(args.tick_ms)]
        metrics = ""
        if args.metrics_port is not None:
            metrics = f"{args.host}:{args.metrics_port + ids.index(nid)}"
            cmd += ["--metrics", metrics]
            metrics = f"  metrics http://{metrics}/metrics"
        procs[nid] = subprocess.Popen(cmd, start_new_session=True)
        print(f"  {nid}  listening on {addrs[nid]}  data {data / nid}  pid {procs[nid].pid}{metrics}")
    first = addrs[ids[0]]
    print(f"\nConnect with:  aegis-shell --addr {first}    or    redis-cli -p {args.port}")
    print("Press Ctrl-C to stop every node. Run `aegis up` again to restart from the same data.\n")
    reported: set[str] = set()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Explicitly: a shell starts background jobs with SIGINT ignored, and Ctrl-C must work.
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            time.sleep(0.2)
            for nid, p in procs.items():
                rc = p.poll()
                if rc is not None and nid not in reported:
                    reported.add(nid)
                    print(f"aegis up: node {nid} exited with code {rc}; leaving it down "
                          f"(the others carry on while they have a quorum)", file=sys.stderr)
            if len(reported) == len(procs):
                print("aegis up: every node has exited", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    print("\naegis up: stopping the cluster…")
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for nid, p in procs.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"aegis up: {nid} did not stop in time; killing it", file=sys.stderr)
            p.kill()
            p.wait()
    print("aegis up: stopped.")
    return 0


# ---------------------------------------------------------------------- operating a cluster
def cmd_ops(args: argparse.Namespace) -> int:
    from . import ops

    opts = ops.Options(tuple(args.addr), args.token, args.json, getattr(args, "wait", 5.0))
    if args.cmd == "health":
        return ops.health(opts, max_lag=args.max_lag)
    if args.cmd == "leader":
        return ops.leader_transfer(args.node_id, opts)
    return ops.member(args.member_cmd, opts, node_id=getattr(args, "node_id", None),
                      address=getattr(args, "address", None), learner=getattr(args, "learner", False),
                      yes=getattr(args, "yes", False))


def cmd_status_cluster(args: argparse.Namespace) -> int:
    from . import ops

    try:
        addrs = ops.parse_addrs(args.addr)
    except ValueError as exc:
        print(f"aegis status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return ops.status_cluster(ops.Options(tuple(addrs), args.token, args.json), max_lag=args.max_lag)


# ---------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    import trio

    from .client import AegisClient

    async def fetch() -> tuple[dict[str, str], str]:
        client = await AegisClient.connect(args.addr, token=args.token, timeout=3, ssl_context=_client_ssl(args))
        try:
            info = await client.info()
            nodes = await client.execute("CLUSTER", "NODES")
        finally:
            await client.aclose()
        text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
        return info, text

    try:
        info, nodes = trio.run(fetch)
    except Exception as exc:
        if args.json:
            print(json.dumps({"addr": args.addr, "error": str(exc)}))
        else:
            print(f"aegis status: cannot reach {args.addr}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        members = []
        for line in nodes.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                entry: dict[str, str] = {"id": parts[0], "addr": parts[1]}
                for kv in parts[2:]:
                    k, _, v = kv.partition("=")
                    entry[k] = v
                members.append(entry)
        print(json.dumps({"addr": args.addr, "info": info, "members": members}, indent=2))
        return 0
    keys = ["node_id", "role", "leader_id", "term", "commit_index", "applied_index", "last_log_index",
            "snapshot_index", "members", "cluster_state"]
    for k in keys:
        print(f"{k:>16}: {info.get(k, '')}")
    print()
    print(nodes.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
