"""Stateful threads for real-time agents, with double-texting, behind a
LangGraph-compatible API (the official ``langgraph-sdk`` client drives it).

Its own app because the boundary is real: a thread is state Hangar owns
(checkpoints, an ordered queue of runs, crons) on top of the gateway's
routing; the gateway stays a stateless proxy. The API is served by the gateway
process (``/lg/<team>/…``, mounted through ``HANGAR_GATEWAY_MOUNTS``), since a
thread run is a request to a replica the gateway balances; the pages are
served by the web process.

* ``models`` — Thread, Checkpoint, ThreadRun, RunEvent, Cron;
* ``actions`` — every state change (admit a run under a strategy, finish,
  cancel, sweep, threads and crons), atomic, row-locked, audited (a package:
  ``base``, ``threads``, ``runs``, ``leases``, ``crons``);
* ``engine`` — executes runs, leases, cancels, the sweep; ``invoke`` — the
  agent call; ``runlog`` — a run's events; ``asyncdb`` — the ORM from the loop;
* ``server`` — the LangGraph Agent Server routes (ASGI, in the gateway; a
  package: ``app``, ``http``, ``reads`` and one module of routes per resource);
* ``crons`` — firing crons, claimed once per occurrence like batch schedules;
* ``views`` — the threads pages.

It imports ``gateway`` and ``deployments`` (below it), never the other way.
"""
