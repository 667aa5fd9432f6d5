"""`aegis-shell`: the entry point — arguments, the interactive shell, and scripted use.

Theory of operation
-------------------
``aegis-shell`` picks its mode from how it is run:

* arguments after the options (``aegis-shell GET k``): run that one command and exit;
* stdin not a terminal (``aegis-shell < cmds.txt``): run each line in order (blank lines
  and ``#`` comments skipped) and exit;
* otherwise: the interactive `Repl`.

Output follows redis-cli: rich rendering on a terminal, raw text when stdout is not one
(``--raw`` / ``--no-raw`` force either), one JSON value per command with ``--json``. Errors
go to stderr (in JSON mode they are ``{"error": …}`` on stdout) and make the exit code 1;
bad usage exits 2; Ctrl-C exits 130.

A dangerous command (MEMBER REMOVE, LEADER TRANSFER) asks for confirmation; in scripted
mode it is refused unless ``--no-confirm`` (alias ``--yes``) says not to ask — except a
one-shot command typed at a terminal, which asks there.

A stream (``aegis-shell --json CHANGES user:``, SUBSCRIBE, PSUBSCRIBE) prints each change as
it arrives — one JSON object a line with ``--json``: ``{"type": "change", "revision": …,
"changes": [{"key": …, "value": … or null}]}`` after a first ``{"type": "changes", …}`` —
until SIGINT (exit 130) or until it fails (exit 1); the command that resumes it,
``CHANGES prefix FROM <last revision printed>``, goes to stderr. Lines after it run only if
it fails.

Transactions work in scripts as at the prompt (``printf 'MULTI\nINCR a\nEXEC\n' |
aegis-shell``): the connection keeps MULTI's state (see `connection`), and EXEC's replies
are rendered, or put in JSON, item by item.

Concurrency: the client runs in a trio thread behind `bridge.TrioBridge`; see there why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Final, TextIO

from rich.console import Console
from rich.text import Text

from aegis.client import normalize_address
from aegis.commands import COMMANDS, lookup
from aegis.protocol import Reply

from .bridge import TrioBridge
from .connection import ShellConnection, describe_error
from .grammar import (
    EXIT_WORDS,
    META_COMMANDS,
    LineSyntaxError,
    quote_word,
    shell_refusal,
    split_line,
    validate_argv,
)
from .history import make_history
from .render import help_command, help_overview, json_reply, raw_text, render_error, render_reply
from .repl import Repl, ShellOptions, confirmation_question
from .stream import StreamEvent, follow, is_stream_command, json_event, render_event

__all__ = ["main", "build_parser", "parse_args", "run_script", "Mode"]

DEFAULT_ADDRESS: Final = "127.0.0.1:7001"
TOKEN_ENV: Final = "AEGIS_TOKEN"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class Mode:
    PRETTY: Final = "pretty"
    RAW: Final = "raw"
    JSON: Final = "json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis-shell",
        description="Interactive shell for an Aegis cluster. With a command, run it and exit; "
        "with commands on stdin, run them in order.",
        epilog="Examples: aegis-shell · aegis-shell --addr 127.0.0.1:7002 · aegis-shell GET k · "
        "echo 'SET k v' | aegis-shell --json",
    )
    parser.add_argument(
        "--addr", "-a", default=os.environ.get("AEGIS_ADDR", DEFAULT_ADDRESS), metavar="HOST:PORT[,…]",
        help=f"node(s) to connect to, comma-separated seeds (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--token", default=None, help=f"authentication token (default: ${TOKEN_ENV})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per command (default 5)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's CAs unless --tls-ca)")
    parser.add_argument("--tls-ca", default=None, metavar="FILE", help="CA (PEM) to verify nodes against (implies --tls)")
    parser.add_argument("--tls-cert", default=None, metavar="FILE", help="client certificate (PEM), if nodes want one")
    parser.add_argument("--tls-key", default=None, metavar="FILE", help="its private key (PEM)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print each reply as one JSON value per line")
    out.add_argument("--raw", action="store_true", help="raw replies even on a terminal")
    out.add_argument("--no-raw", action="store_true", help="formatted replies even when piped")
    parser.add_argument(
        "--no-confirm", "--yes", "-y", dest="confirm", action="store_false",
        help="do not ask before dangerous commands (MEMBER REMOVE, LEADER TRANSFER)",
    )
    parser.add_argument("--no-pager", dest="pager", action="store_false", help="never page long replies")
    parser.add_argument(
        "--history", default=None, metavar="FILE",
        help="history file (default ~/.aegis_history or $AEGIS_HISTFILE; '' keeps none)",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="a command to run instead of the interactive shell",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.addresses = [normalize_address(a) for a in args.addr.split(",") if a.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.addresses:
        parser.error("--addr needs at least one HOST:PORT")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.token is None:
        args.token = os.environ.get(TOKEN_ENV) or None
    args.ssl_context = None
    if args.tls or args.tls_ca or args.tls_cert:
        from aegis.tls import TlsConfigError, client_context

        try:
            args.ssl_context = client_context(args.tls_ca, cert=args.tls_cert, key=args.tls_key)
        except TlsConfigError as exc:
            parser.error(str(exc))
    return args


def _mode(args: argparse.Namespace, stdout: TextIO) -> str:
    if args.json:
        return Mode.JSON
    if args.raw:
        return Mode.RAW
    if args.no_raw:
        return Mode.PRETTY
    return Mode.PRETTY if stdout.isatty() else Mode.RAW


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:
        return False


def run_script(
    lines: Iterable[str],
    connection: ShellConnection,
    bridge: TrioBridge,
    *,
    mode: str,
    confirm: bool,
    stdout: TextIO,
    stderr: TextIO,
    ask_tty: bool = False,
) -> int:
    """Run each line in order; the exit code (1 if any command failed)."""
    console = Console(file=stdout, highlight=False, soft_wrap=True)
    errors = Console(file=stderr, highlight=False, soft_wrap=True)
    failed = False

    def fail(message: str) -> None:
        nonlocal failed
        failed = True
        if mode == Mode.JSON:
            stdout.write(json.dumps({"error": message}) + "\n")
        else:
            errors.print(render_error(message))

    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            argv = split_line(line)
        except LineSyntaxError as exc:
            fail(f"ERR line {number}: {exc}")
            continue
        name = argv[0].decode("utf-8", "replace").upper()
        if name in EXIT_WORDS:
            break
        refusal = shell_refusal(argv)
        if refusal is not None:
            fail(f"ERR {refusal}")
            continue
        if name in META_COMMANDS and name not in COMMANDS:
            problem = validate_argv(argv)
            if problem is not None:
                fail(f"ERR {problem}")
            elif name == "HELP":
                words = [a.decode("utf-8", "replace") for a in argv[1:]]
                if not words:
                    console.print(help_overview())
                else:
                    found = META_COMMANDS.get(words[0].upper()) or lookup(*words)
                    if found is None:
                        fail(f"ERR no such command {words[0]!r}")
                    else:
                        console.print(help_command(found))
            elif name == "CONFIRM":
                confirm = len(argv) < 2 or argv[1].lower() == b"on"
            else:
                fail(f"ERR {name} needs the interactive shell")
            continue
        spec = lookup(*[a.decode("utf-8", "replace") for a in argv[:2]])
        if spec is not None and spec.dangerous and confirm:
            question = confirmation_question(spec, argv)
            if not ask_tty:
                fail(f"ERR refusing {spec.name} without confirmation: {question} "
                     "(pass --no-confirm to run it from a script)")
                continue
            try:
                answer = input(f"{question} [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                fail(f"ERR {spec.name} not confirmed; nothing was sent")
                continue
        if is_stream_command(argv) and not connection.session.in_multi:
            code = _follow_in_script(argv, connection, bridge, mode=mode, console=console,
                                     stdout=stdout, stderr=errors, keys=ask_tty)
            if code == EXIT_INTERRUPTED:
                return code
            if code != EXIT_OK:
                failed = True
            continue
        outcome = bridge.run(connection.execute, argv)
        if outcome.error is not None:
            fail(describe_error(outcome.error))
            continue
        if mode == Mode.JSON:
            value = json_reply(argv, outcome.reply, outcome.queued)
            stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        elif mode == Mode.RAW:
            stdout.write(raw_text(outcome.reply) + "\n")
        else:
            console.print(render_reply(argv, outcome.reply, outcome.queued))
        stdout.flush()
    return EXIT_FAILED if failed else EXIT_OK


def _follow_in_script(
    argv: list[bytes],
    connection: ShellConnection,
    bridge: TrioBridge,
    *,
    mode: str,
    console: Console,
    stdout: TextIO,
    stderr: Console,
    keys: bool,
) -> int:
    """A stream in a script: each event as it comes (one JSON object a line with --json,
    redis-cli's raw lines when piped), flushed at once, until SIGINT or the stream fails.
    Where to resume goes to stderr; an interrupt ends the script (exit 130)."""

    def show(event: StreamEvent, reply: Reply) -> None:
        if mode == Mode.JSON:
            stdout.write(json.dumps(json_event(event), ensure_ascii=False) + "\n")
        elif mode == Mode.RAW:
            stdout.write(raw_text(reply) + "\n")
        else:
            console.print(render_event(event))
        stdout.flush()

    result = follow(bridge, connection.stream_client, argv, show, keys=keys)
    progress = result.progress
    if result.error is not None:
        message = describe_error(result.error)
        if mode == Mode.JSON:
            stdout.write(json.dumps({"error": message}) + "\n")
            stdout.flush()
        else:
            stderr.print(render_error(message))
    if result.error is None or progress.started:
        stderr.print(Text(f"{progress.summary()} · {progress.resume_hint()}", style="yellow"))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if result.error is not None else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stdout, stderr, stdin = sys.stdout, sys.stderr, sys.stdin
    interactive = not args.command and _isatty(stdin) and _isatty(stdout)
    try:
        with TrioBridge() as bridge:
            connection = bridge.run(_make_connection, args)
            if interactive:
                options = ShellOptions(
                    addresses=args.addresses, token=args.token, timeout=args.timeout,
                    confirm=args.confirm, pager=args.pager, history=args.history,
                )
                repl = Repl(options, bridge, connection, Console(highlight=False),
                            history=make_history(args.history))
                return repl.run()
            if args.command:
                # Each shell argument is one word (so ``aegis-shell SET k "a b"`` keeps the space).
                lines: Iterable[str] = [" ".join(quote_word(a) for a in args.command)]
                ask = _isatty(stdin)
            else:
                lines = stdin
                ask = False
            try:
                return run_script(
                    lines, connection, bridge, mode=_mode(args, stdout), confirm=args.confirm,
                    stdout=stdout, stderr=stderr, ask_tty=ask,
                )
            finally:
                bridge.run(connection.aclose, timeout=3)
    except KeyboardInterrupt:
        Console(file=stderr).print(Text("interrupted", style="yellow"))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`aegis-shell … | head`): stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        except OSError:
            pass
        return EXIT_FAILED


async def _make_connection(args: argparse.Namespace) -> ShellConnection:
    return ShellConnection(args.addresses, token=args.token, timeout=args.timeout, ssl_context=args.ssl_context)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
