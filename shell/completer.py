"""Grammar-driven completion, and what the session has learned to complete with.

Theory of operation
-------------------
`Knowledge` is the shell's memory of names: keys named by commands that ran in this session
and keys listed in the replies the user asked for (SCAN, KEYS, RANGE, PREFIX), node ids and
addresses from status replies (CLUSTER NODES, MEMBER LIST). It is filled only by what the
user already did; the shell never runs a SCAN or KEYS of its own to complete a key (that
would be a read of a replicated store for a keystroke). It is bounded: the most recently
seen names are kept, the oldest dropped.

`AegisCompleter` asks `grammar.analyze` what the word under the cursor is: a command, a
sub-command, or an argument of a known command (`Analysis.arg_at`: by position, or the
value of the option before it), whose `ArgKind` in the catalogue decides the candidates
(keys, node ids, addresses, keyword choices, command names for HELP). Options already used
are not offered again, nor the ones they exclude (``NX`` takes ``XX`` away). Completions
keep the case the user is typing in; keys that need quoting come back quoted.

`Knowledge` is written by the main thread only (after each command); prompt-toolkit may
read it from its completion thread, so readers take a snapshot (`list(...)`) of a dict
whose single-item updates are atomic under the GIL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Final

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from aegis.commands import COMMANDS, ArgKind
from aegis.protocol import Reply

from .grammar import META_COMMANDS, MetaCommand, Token, analyze, argument_roles, option_groups, quote_word

__all__ = ["Knowledge", "AegisCompleter", "quote_word"]

MAX_KEYS: Final = 2000
MAX_NODES: Final = 64


class _Recent:
    """An insertion-ordered, bounded set: re-adding a name makes it the most recent."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, name: str) -> None:
        if not name:
            return
        self._items.pop(name, None)
        self._items[name] = None
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def discard(self, name: str) -> None:
        self._items.pop(name, None)

    def newest_first(self) -> list[str]:
        return list(reversed(list(self._items)))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


class Knowledge:
    """Names seen in this session: keys, node ids, node addresses."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.keys = _Recent(max_keys)
        self.node_ids = _Recent(MAX_NODES)
        self.addresses = _Recent(MAX_NODES)

    def learn_command(self, argv: list[bytes]) -> None:
        """Remember the keys (and node ids, addresses) named by a command the user ran."""
        if not argv:
            return
        words = [a.decode("utf-8", "replace") for a in argv]
        spec = COMMANDS.get(words[0].upper())
        start = 1
        if spec is not None and spec.subcommands and len(words) > 1:
            sub = spec.subcommand(words[1])
            if sub is not None:
                spec, start = sub, 2
        if spec is None or not spec.args:
            return
        for word, arg in zip(words[start:], argument_roles(spec, words[start:])):
            if arg is None:
                break
            if arg.kind is ArgKind.KEY:
                self.keys.add(word)
            elif arg.kind is ArgKind.NODE_ID:
                self.node_ids.add(word)
            elif arg.kind is ArgKind.ADDRESS:
                self.addresses.add(word)

    def learn_reply(self, argv: list[bytes], reply: Reply) -> None:
        """Remember the keys a reply lists: SCAN's ``[cursor, [keys]]``, KEYS, and RANGE and
        PREFIX (``[key, value, ...]``, or keys alone with KEYSONLY)."""
        if not argv or not isinstance(reply, list):
            return
        name = argv[0].upper()
        keys: list[Reply] = []
        if name == b"SCAN" and len(reply) == 2 and isinstance(reply[1], list):
            keys = reply[1]
        elif name == b"KEYS":
            keys = reply
        elif name in (b"RANGE", b"PREFIX"):
            keys_only = any(a.upper() == b"KEYSONLY" for a in argv[2:])
            keys = reply if keys_only else reply[::2]
        for key in keys:
            if isinstance(key, bytes):
                self.keys.add(key.decode("utf-8", "replace"))

    def learn_node(self, node_id: str | None, address: str | None) -> None:
        if node_id:
            self.node_ids.add(node_id)
        if address:
            self.addresses.add(address)


def _match_case(candidate: str, typed: str) -> str:
    """Keywords follow the user's case: ``mem`` completes to ``member``."""
    if typed and typed == typed.lower() and typed != typed.upper():
        return candidate.lower()
    return candidate


class AegisCompleter(Completer):
    """Commands, sub-commands, keyword choices, and names the session has seen."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        analysis = analyze(text)
        tokens = analysis.tokens
        if not tokens or analysis.trailing_space:
            index, typed, typed_len = len(tokens), "", 0
        else:
            last = tokens[-1]
            index, typed, typed_len = len(tokens) - 1, text[last.start :], len(text) - last.start
        # What the word under the cursor means, as text without its opening quote.
        bare = typed[1:] if typed[:1] in ("'", '"') else typed

        if index == 0:
            yield from self._commands(bare, typed_len)
            return
        spec = analysis.spec
        if spec is None:
            return
        if isinstance(spec, MetaCommand):
            yield from self._meta_args(spec, tokens, index, bare, typed_len)
            return
        if index == 1 and spec.subcommands:
            for sub in spec.subcommands:
                word = sub.words[-1]
                if word.startswith(bare.upper()):
                    yield Completion(
                        _match_case(word, bare), -typed_len, display_meta=sub.summary
                    )
            return
        arg = analysis.arg_at(index)
        if arg is None:
            return
        if arg.kind is ArgKind.KEYWORD:
            taken: set[str] = set()
            if arg.multiple:  # options: each once, and not those a used one excludes
                used = analysis.used_options(index)
                taken = set().union(*(g for g in option_groups(spec.syntax) if g & used))
            for choice in arg.choices:
                if choice.upper().startswith(bare.upper()) and choice.upper() not in taken:
                    yield Completion(_match_case(choice, bare), -typed_len, display_meta=arg.name)
        elif arg.kind is ArgKind.KEY:
            yield from self._names(self.knowledge.keys.newest_first(), bare, typed_len, "key")
        elif arg.kind is ArgKind.NODE_ID:
            yield from self._names(self.knowledge.node_ids.newest_first(), bare, typed_len, "node")
        elif arg.kind is ArgKind.ADDRESS:
            yield from self._names(self.knowledge.addresses.newest_first(), bare, typed_len, "address")

    # -- pieces

    def _commands(self, typed: str, typed_len: int) -> Iterator[Completion]:
        upper = typed.upper()
        for spec in COMMANDS.values():
            if spec.name.startswith(upper):
                yield Completion(_match_case(spec.name, typed), -typed_len, display_meta=spec.summary)
        for name, meta in META_COMMANDS.items():
            if name not in COMMANDS and name.startswith(upper):
                yield Completion(
                    _match_case(name, typed), -typed_len, display_meta=f"(shell) {meta.summary}"
                )

    def _meta_args(
        self, meta: MetaCommand, tokens: tuple[Token, ...], index: int, typed: str, typed_len: int
    ) -> Iterator[Completion]:
        if meta.name == "HELP":
            if index == 1:
                yield from self._commands(typed, typed_len)
            elif index == 2:
                container = COMMANDS.get(tokens[1].text.upper())
                if container is not None:
                    for sub in container.subcommands:
                        word = sub.words[-1]
                        if word.startswith(typed.upper()):
                            yield Completion(_match_case(word, typed), -typed_len, display_meta=sub.summary)
            return
        if meta.name == "CONNECT" and index == 1:
            yield from self._names(self.knowledge.addresses.newest_first(), typed, typed_len, "address")
            return
        if index - 1 < len(meta.args):
            arg = meta.args[index - 1]
            for choice in arg.choices:
                if choice.startswith(typed.lower()):
                    yield Completion(choice, -typed_len, display_meta=arg.name)

    @staticmethod
    def _names(names: list[str], typed: str, typed_len: int, meta: str) -> Iterator[Completion]:
        for name in names:
            if name.startswith(typed):
                yield Completion(quote_word(name), -typed_len, display=name, display_meta=meta)
