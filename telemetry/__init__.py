"""Telemetry: OpenTelemetry run traces, LLM and compute cost, budgets.

A separate app because the boundary is real: spans are high-volume,
append-only rows with their own storage (bulk COPY into day partitions on
PostgreSQL), their own retention (partitions dropped whole) and their own
ingestion endpoint authenticated by a per-deployment ingest token rather than
by a user. It reads the registry (teams, agents, deployments, instances) and
acts on it only through ``deployments.actions`` (budget pauses and scale-downs
are ordinary, audited verbs); ``deployments`` only reads its summaries for
the fleet and deployment pages (``telemetry.summary``) and cleans up its own
chart samples through telemetry's hourly retention task.
"""
