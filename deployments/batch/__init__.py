"""The batch pattern's machinery: firing schedules and supervising their jobs.

- (``deployments.jobs`` makes job runs and tells live pages; the verbs use it too);
- ``scheduler``: claims due occurrences (``FOR UPDATE SKIP LOCKED`` on the
  schedule row, then a compare-and-set of ``next_due_at``) so each fires once
  however many schedulers run; catch-up and missed occurrences;
- ``supervisor``: level-triggered job supervision through the runtime — start,
  observe, time out, cancel, replace, retry with backoff, record the outcome;
- ``outcome``: reading a finished job (exit code, logs tail, output line);
- ``history``: pruning finished runs per schedule.

The calendar math is ``deployments.cron``; the verbs are ``actions.batch``.
"""
