"""The interactive shell: the prompt-toolkit session and what happens to each line.

Theory of operation
-------------------
`Repl.run` is a loop on the main thread: read a line with `PromptSession.prompt` (history,
completion, highlighting, validation, the toolbar — all prompt-toolkit), then
`handle_line` it: meta-commands (HELP, DASHBOARD, CONFIRM, CONNECT, CLEAR, EXIT) are
answered here, and so is a bare WATCH (a pointer to DASHBOARD and to what WATCH means);
anything else is confirmed if dangerous, sent through the bridge to the `ShellConnection`
in the trio thread, and its `Outcome` printed with rich.

Transactions: while MULTI is open the prompt says ``(TX)`` and the toolbar how many commands
are queued and which keys are WATCHed; the connection keeps them on one connection (see
`connection`). CONNECT is refused while it holds any, since the server forgets them with the
old connection; a transaction lost with its connection (a dead node, Ctrl-C) is announced.

Streams: CHANGES, SUBSCRIBE and PSUBSCRIBE are shown live, change by change, on a
connection of their own (see `stream`), until Ctrl-C or q; then the shell says how to
resume (``CHANGES prefix FROM <last revision seen>``) and the prompt is back, its
connection as it was (inside MULTI they go to the node, which refuses them there).

Keys: Ctrl-C at the prompt clears the line (prompt-toolkit raises KeyboardInterrupt, the
loop goes on); Ctrl-C during a command cancels it (the bridge cancels the trio task) and
says whether it may have been applied; Ctrl-D on an empty line exits; Ctrl-R searches
the history; Right accepts a grey suggestion from history; Tab completes.

The prompt and the toolbar read `ShellConnection.view`, which the background monitor keeps
current, and prompt-toolkit redraws them every second, so a node that dies while the user
is typing shows as ``(down)`` before the next command is even sent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import get_app
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from rich.console import Console
from rich.text import Text

from aegis.commands import COMMANDS, CommandSpec, lookup
from aegis.errors import UnknownOutcomeError
from aegis.protocol import Reply

from .bridge import BridgeClosedError, TrioBridge
from .completer import AegisCompleter, Knowledge
from .connection import NodeView, Outcome, ShellConnection, describe_error
from .dashboard import Collector, run_dashboard
from .grammar import EXIT_WORDS, META_COMMANDS, LineSyntaxError, shell_refusal, split_line
from .lexer import SHELL_STYLE, AegisLexer, AegisValidator, syntax_hint
from .render import help_command, help_overview, print_paged, render_error, render_reply
from .status import members_from_reply
from .stream import Change, FollowResult, Message, StreamEvent, follow, is_stream_command, render_event
from .transaction import NO_SESSION, Session

__all__ = ["ShellOptions", "Repl", "prompt_text", "confirmation_question"]

SLOW_REPLY: Final = 1.0  # seconds after which the time a command took is shown
STOP_HINT: Final = "Ctrl-C (or q) returns to the prompt"


@dataclass(slots=True)
class ShellOptions:
    addresses: list[str]
    token: str | None = None
    timeout: float = 5.0
    confirm: bool = True
    pager: bool = True
    history: str | None = None  # None: the default file; "": memory only
    dashboard_interval: float = 1.0


def prompt_text(view: NodeView, session: Session = NO_SESSION) -> str:
    """The prompt as plain text: ``127.0.0.1:7001 (leader)> ``, or inside MULTI
    ``127.0.0.1:7001 (leader) (TX)> `` (redis-cli says ``(TX)`` too)."""
    return f"{view.address} ({view.label}){' (TX)' if session.in_multi else ''}> "


def _interval_like(word: bytes) -> bool:
    try:
        return 0.1 <= float(word) <= 60
    except ValueError:
        return False


def confirmation_question(spec: CommandSpec, argv: list[bytes]) -> str:
    target = argv[-1].decode("utf-8", "replace") if len(argv) > 2 else ""
    if spec.name == "MEMBER REMOVE":
        return f"Remove member {target} from the cluster? It stops counting for quorum."
    if spec.name == "LEADER TRANSFER":
        return f"Transfer leadership to {target}? Writes pause briefly during the hand-over."
    return f"Run {spec.name} {target}?".rstrip() + " It is marked dangerous."


def _spec_for(argv: list[bytes]) -> CommandSpec | None:
    words = [a.decode("utf-8", "replace") for a in argv[:2]]
    return lookup(*words) if words else None


class Repl:
    """One interactive session. Construct, then `run()`; returns the exit code."""

    def __init__(
        self,
        options: ShellOptions,
        bridge: TrioBridge,
        connection: ShellConnection,
        console: Console,
        *,
        history: History | None = None,
        input: Input | None = None,
        output: Output | None = None,
        monitor: bool = True,
    ) -> None:
        self.options = options
        self.bridge = bridge
        self.conn = connection
        self.console = console
        self.knowledge = Knowledge()
        self.confirm = options.confirm
        self.failures = 0
        self._monitor = monitor
        self._monitor_scope: trio.CancelScope | None = None
        self.session: PromptSession[str] = PromptSession(
            message=self._prompt_fragments,
            completer=AegisCompleter(self.knowledge),
            complete_while_typing=True,
            lexer=AegisLexer(),
            validator=AegisValidator(),
            validate_while_typing=False,
            auto_suggest=AutoSuggestFromHistory(),
            history=history if history is not None else InMemoryHistory(),
            bottom_toolbar=self._toolbar,
            style=SHELL_STYLE,
            refresh_interval=1.0,
            input=input,
            output=output,
            include_default_pygments_style=False,
        )
        self._ask: PromptSession[str] = PromptSession(input=input, output=output)

    # -- prompt and toolbar

    def _prompt_fragments(self) -> StyleAndTextTuples:
        view = self.conn.view
        label = view.label
        role_style = {
            "leader": "class:prompt.role.leader",
            "follower": "class:prompt.role.follower",
            "down": "class:prompt.down",
        }.get(label, "class:prompt.role.other")
        fragments: StyleAndTextTuples = [
            ("class:prompt.address", view.address),
            ("", " "),
            (role_style, f"({label})"),
        ]
        if self.conn.session.in_multi:
            fragments += [("", " "), ("class:prompt.tx", "(TX)")]
        fragments.append(("", "> "))
        return fragments

    def _toolbar(self) -> StyleAndTextTuples:
        try:
            text = get_app().current_buffer.document.text_before_cursor
        except Exception:  # noqa: BLE001 - no app yet
            text = ""
        line: StyleAndTextTuples = list(syntax_hint(text))
        line.append(("", "\n"))
        view = self.conn.view
        session = self.conn.session
        if view.checked and not view.reachable:
            line.append(("class:bottom-toolbar.down", f"✗ {view.address} is down"))
            if view.error:
                line.append(("class:bottom-toolbar.problem", f" ({view.error})"))
            others = len(self.conn.client.seeds) > 1
            if session.pinned:
                what = "the open transaction" if session.in_multi else "the WATCH"
                line.append(("class:bottom-toolbar.problem", f" · {what} goes with this connection"))
            else:
                line.append((
                    "class:bottom-toolbar.dim",
                    " · the next command tries another member" if others else " · the next command tries again",
                ))
        elif view.checked:
            line.append(("class:bottom-toolbar.ok", f"● {view.address}"))
            who = " ".join(p for p in (view.node_id, view.role) if p)
            if who:
                line.append(("class:bottom-toolbar.syntax", f" {who}"))
            if view.term is not None:
                line.append(("class:bottom-toolbar.dim", f" · term {view.term}"))
            leader = view.leader_id or "none"
            line.append(("class:bottom-toolbar.dim", f" · leader {leader}"))
        else:
            line.append(("class:bottom-toolbar.dim", f"○ {view.address} (connecting…)"))
        if session.in_multi:
            count = len(session.queued or ())
            line.append(("class:bottom-toolbar.tx", f" · TX: {count} queued"))
            if session.doomed:
                line.append(("class:bottom-toolbar.problem", " (EXEC will refuse it: DISCARD)"))
            else:
                line.append(("class:bottom-toolbar.dim", " · EXEC runs them, DISCARD drops them"))
        if session.watched:
            shown = ", ".join(session.watched[:4]) + (", …" if len(session.watched) > 4 else "")
            line.append(("class:bottom-toolbar.tx", f" · watching {shown}"))
        line.append(("class:bottom-toolbar.dim", f" · confirm {'on' if self.confirm else 'off'}"))
        return line

    # -- the loop

    def start(self) -> NodeView:
        view = self.bridge.run(self.conn.start)
        if self._monitor:
            _, scope = self.bridge.submit(self.conn.monitor)
            self._monitor_scope = scope
        return view

    def greet(self, view: NodeView) -> None:
        if view.reachable:
            who = ", ".join(p for p in (view.node_id, view.role) if p)
            self.console.print(Text.assemble(
                ("Connected to ", "dim"), (view.address, "bold"), (f" ({who})" if who else "", ""),
                (". HELP lists the commands, DASHBOARD opens the live view, Ctrl-D exits.", "dim"),
            ))
        else:
            self.console.print(render_error(f"{view.address} is not answering: {view.error}"))
            self.console.print(Text("The shell will try every seed again on the next command.", style="dim"))

    def run(self) -> int:
        self.greet(self.start())
        try:
            while True:
                try:
                    line = self.session.prompt()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                try:
                    if not self.handle_line(line):
                        break
                except KeyboardInterrupt:
                    self.console.print(Text("interrupted", style="yellow"))
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        scope = self._monitor_scope
        self._monitor_scope = None
        if scope is not None:
            self.bridge.cancel(scope)
        try:
            self.bridge.run(self.conn.aclose, timeout=3)
        except (BridgeClosedError, TimeoutError, KeyboardInterrupt):
            pass

    # -- one line

    def handle_line(self, line: str) -> bool:
        """Run one line; False when the shell should exit."""
        if not line.strip():
            return True
        try:
            argv = split_line(line)
        except LineSyntaxError as exc:
            self.console.print(render_error(f"ERR {exc}"))
            self.failures += 1
            return True
        name = argv[0].decode("utf-8", "replace").upper()
        if name in EXIT_WORDS:
            if self.conn.session.in_multi:
                self.console.print(Text("the open transaction was discarded (nothing was written)", style="yellow"))
            return False
        refusal = shell_refusal(argv)
        if refusal is not None:
            self.console.print(render_error(refusal))
            self.failures += 1
            return True
        if name in META_COMMANDS and name not in COMMANDS:
            self.meta(name, argv[1:])
            return True
        if is_stream_command(argv) and not self.conn.session.in_multi:  # in MULTI the node refuses it
            self.follow(argv)
            return True
        spec = _spec_for(argv)
        if spec is not None and spec.dangerous and self.confirm:
            if not self.ask(confirmation_question(spec, argv)):
                self.console.print(Text("not sent", style="yellow"))
                return True
        outcome = self.execute(argv)
        self.show(outcome)
        if name == "WATCH" and len(argv) == 2 and outcome.ok and _interval_like(argv[1]):
            interval = argv[1].decode()
            self.console.print(Text(
                f"(WATCH watched the key {interval!r} for the next EXEC; the dashboard is "
                f"DASHBOARD {interval}. UNWATCH forgets it.)", style="dim",
            ))
        return True

    def ask(self, question: str) -> bool:
        try:
            answer = self._ask.prompt(f"{question} [y/N] ")
        except (KeyboardInterrupt, EOFError):
            return False
        return answer.strip().lower() in ("y", "yes")

    def execute(self, argv: list[bytes]) -> Outcome:
        try:
            return self.bridge.run(self.conn.execute, argv)
        except (BridgeClosedError, OSError, ValueError, RuntimeError) as exc:
            # Not a reply: something broke on this side. Say so and keep the shell alive.
            return Outcome(tuple(argv), error=exc, before=self.conn.view, after=self.conn.view)
        except KeyboardInterrupt:
            spec = _spec_for(argv)
            # Inside MULTI only EXEC applies anything; a queued command was at most queued.
            queued_only = self.conn.session.in_multi and (spec is None or spec.name != "EXEC")
            may_apply = (spec is None or spec.write or spec.dangerous) and not queued_only
            note = "interrupted: the command may or may not have been applied" if may_apply else "interrupted"
            # The client drops a connection interrupted mid-request: a transaction on it is gone.
            try:
                lost = self.bridge.run(self.conn.check_session, argv, timeout=2)
            except (BridgeClosedError, TimeoutError, KeyboardInterrupt):
                lost = None
            notices = (lost,) if lost else ()
            return Outcome(tuple(argv), error=KeyboardInterrupt(note), before=self.conn.view,
                           after=self.conn.view, notices=notices)

    def show(self, outcome: Outcome) -> None:
        for notice in outcome.notices:
            self.console.print(Text(f"⚠ {notice}", style="bold yellow"))
        argv = list(outcome.argv)
        if outcome.error is not None:
            self.failures += 1
            if isinstance(outcome.error, KeyboardInterrupt):
                self.console.print(Text(str(outcome.error), style="yellow"))
                return
            self.console.print(render_error(describe_error(outcome.error)))
            spec = _spec_for(argv)
            if isinstance(outcome.error, UnknownOutcomeError) and (spec is None or spec.write or spec.dangerous):
                self.console.print(Text(
                    "  the outcome is unknown: a write may still have been applied", style="dim"
                ))
            return
        self.knowledge.learn_command(argv)
        self.knowledge.learn_reply(argv, outcome.reply)
        for queued, reply in zip(outcome.queued, outcome.reply if isinstance(outcome.reply, list) else ()):
            self.knowledge.learn_reply(list(queued), reply)
        rows = None
        name = " ".join(a.decode("utf-8", "replace").upper() for a in argv[:2])
        if name in ("CLUSTER NODES", "MEMBER LIST"):
            rows = members_from_reply(outcome.reply, self.conn.view.leader_id)
            for row in rows or ():
                self.knowledge.learn_node(row.node_id, row.address)
        print_paged(self.console, render_reply(argv, outcome.reply, outcome.queued), pager=self.options.pager)
        if outcome.elapsed >= SLOW_REPLY:
            self.console.print(Text(f"({outcome.elapsed:.2f}s)", style="dim"))

    def follow(self, argv: list[bytes], *, stop: threading.Event | None = None) -> FollowResult:
        """CHANGES / SUBSCRIBE / PSUBSCRIBE, live on a connection of their own, until
        Ctrl-C (or q, or `stop`); then how to resume. The command connection is untouched."""

        def show(event: StreamEvent, reply: Reply) -> None:
            if isinstance(event, Change):
                for key, _value in event.items:
                    self.knowledge.keys.add(key.decode("utf-8", "replace"))
            elif isinstance(event, Message) and event.key_event is not None:
                self.knowledge.keys.add(event.key_event[0].decode("utf-8", "replace"))
            self.console.print(render_event(event, at=time.strftime("%H:%M:%S"), hint=STOP_HINT))

        result = follow(self.bridge, self.conn.stream_client, argv, show, keys=True, stop=stop)
        progress = result.progress
        if result.error is not None:
            self.failures += 1
            self.console.print(render_error(describe_error(result.error)))
            if progress.started:
                self.console.print(Text(f"{progress.summary()} · {progress.resume_hint()}", style="dim"))
            return result
        self.console.print(Text.assemble(
            (progress.summary(), "yellow"), (" · ", "dim"), (progress.resume_hint(), "bold"),
        ))
        return result

    # -- meta-commands

    def meta(self, name: str, args: list[bytes]) -> None:
        words = [a.decode("utf-8", "replace") for a in args]
        if name == "HELP":
            self.help(words)
        elif name == "CONFIRM":
            if words:
                self.confirm = words[0].lower() == "on"
            state = "on" if self.confirm else "off"
            self.console.print(Text(f"confirmation of dangerous commands is {state}", style="dim"))
        elif name == "CLEAR":
            self.console.clear()
        elif name == "CONNECT":
            session = self.conn.session
            if session.pinned:
                held = "an open transaction" if session.in_multi else "WATCHed keys"
                way = "EXEC or DISCARD" if session.in_multi else "UNWATCH"
                self.console.print(render_error(
                    f"ERR this connection holds {held}, which the server forgets when it closes: "
                    f"{way} first. Nothing was changed."
                ))
                self.failures += 1
                return
            view = self.bridge.run(self.conn.connect_to, words[0])
            self.greet(view)
        elif name == "DASHBOARD":
            self.dashboard(float(words[0]) if words else self.options.dashboard_interval)

    def help(self, words: list[str]) -> None:
        if not words:
            print_paged(self.console, help_overview(), pager=self.options.pager)
            return
        first = words[0].upper()
        meta = META_COMMANDS.get(first)
        if meta is not None and first not in COMMANDS:
            self.console.print(help_command(meta))
            return
        spec = lookup(*words)
        if spec is None:
            self.console.print(render_error(f"ERR no such command {words[0]!r}; HELP lists them"))
            return
        self.console.print(help_command(spec))

    def dashboard(self, interval: float) -> None:
        seeds = dict(self.conn.members) or {self.conn.view.address: self.conn.view.address}
        for address in self.conn.client.seeds:
            if address not in seeds.values():
                seeds[address] = address
        collector = Collector(seeds, token=self.options.token, timeout=min(0.8, max(0.3, interval * 0.8)))
        run_dashboard(self.bridge, collector, self.console, interval=interval)
        self.console.print(Text("left the dashboard", style="dim"))
