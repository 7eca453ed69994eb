"""The edge fleet: devices, enrolment, signed bundles, the device pull API and
phased rollouts.

A boundary of its own: devices are not instances of a runtime Hangar
controls. Hangar cannot reach them; they enrol with a token, then pull their
desired state (``GET /api/v1/edge/state``), download the bundle it names,
verify its Ed25519 signature against the team's keys and report back. So this
app never drives a runtime and the reconciler never sees a device: it sits
above ``deployments`` and ``telemetry`` (an import-linter layer), reads the
edge deployment a device group serves, and registers the figure that
``deployments.patterns.edge`` turns into that deployment's health.

One job a module: ``models`` (state and invariants), ``signing`` (team
Ed25519 keys, private halves encrypted at rest), ``bundles`` (content-addressed
storage and manifest validation), ``auth`` (device tokens and the coalesced
last-seen), ``state`` (the desired-state document and its ETag), ``actions``
(operator verbs), ``device`` (what a device does: enrol, report), ``rollouts``
(waves, promotion, halting and rollback), ``api`` (the ninja router),
``views`` (the fleet pages), ``health`` (the deployment figure).
"""
