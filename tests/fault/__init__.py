"""The fault harness: real nodes behind proxies, a seeded nemesis, a linearizability checker.

`python -m tests.fault --help` runs it; `linearizability` is the checker, `workload` the
clients that record the history, `nemesis` the faults, `run` the whole run.
"""
