"""hbloop's load benchmark: ``python -m bench`` (see ``python -m bench --help``).

Modules, one job each: ``sizing`` splits clients over processes and source
addresses; ``loadgen`` is a worker process full of open-loop clients; ``servers``
starts the server under test (hbloop, ``reference_server``, or the C one that
``c_server`` builds from ``c_reference/hbref.c``) and samples it;
``orchestrator`` runs one workload against one server; ``report`` and ``plot`` show
the results; ``cli`` ties them together.

``python -m bench.cost`` is apart: the deterministic cost gate (instructions per
heartbeat under callgrind, bytes per connection under tracemalloc, checked against
``cost_budget.json``), with its workload in ``cost_workload``.
"""
