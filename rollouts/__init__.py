"""Progressive delivery: canary and blue-green rollouts with automated analysis.

A separate app because the boundary is real: a rollout is its own state
machine over time (steps, pauses, analysis measurements every few seconds,
notifications with retries) that reads telemetry per revision and decides
for the reconciler and the gateway — ``deployments`` only knows rolling and
recreate and asks this app, through the ``deployments.traffic`` seam, how
many instances of which revision to run; the gateway reads the weights from
here when it loads its table. It sits above ``telemetry`` (analysis reads
runs and cost; webhooks go through its SSRF-safe sender) and ``deployments``
(its verbs and models), below the gateway.

``models``    the policy (strategy, steps), rollouts, analysis results, team hooks
``steps``     parsing and validating steps and analysis templates (422 naming the step)
``analysis``  metrics per revision over a sliding window; conditions
``engine``    the state machine (advance), the split for the reconciler, weights
``actions``   verbs: set the strategy, promote, promote full, abort, retry, undo, hooks
``notify``    generic and Slack-compatible payloads, delivery with retries
``api``/``views``/``tasks``  the REST routes, the rollout page, Celery tasks
"""
