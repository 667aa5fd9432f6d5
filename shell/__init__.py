"""`aegis-shell`: the interactive shell and live dashboard of Aegis (a client, nothing more).

Modules, from the entry point down:

* `app` — arguments, modes (interactive, one command, piped lines), output forms, exit codes;
* `repl` — the prompt-toolkit session and what each line does;
* `dashboard` — ``DASHBOARD``: the collector that polls every member and the rich `Live` screen;
* `connection` — the client as the shell uses it: node view, notices, failover seeds;
* `transaction` — MULTI's queue and WATCHed keys, which pin the connection while they last;
* `bridge` — the trio thread the client lives in (why a thread: see there);
* `grammar`, `lexer`, `completer` — the command grammar and what it drives while typing;
* `render`, `status` — replies as rich text and tables; tolerant status parsers;
* `history` — history in the home directory that never keeps a token.
"""
