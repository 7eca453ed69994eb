"""What drivers are given: instance specs (env, resources, probes) and, for
drivers that manage replicas, the whole-deployment spec."""
from __future__ import annotations

from django.conf import settings

from ..autoscaling.scaler import lag_policy
from ..errors import Invalid
from ..models import AgentVersion, Deployment, Instance, Secret
from ..patterns import get_pattern
from ..runtimes import RuntimeFailure
from ..runtimes.base import (
    Autoscale,
    DeploymentSpec,
    HealthCheck,
    InstanceSpec,
    LagScaling,
    ManagedNames,
)
from . import tracks
from .context import Pass


def health_check(version: AgentVersion) -> HealthCheck | None:
    if not version.port:
        return None
    health = version.health or {}
    return HealthCheck(
        path=health.get("path", "/healthz"),
        ready_path=health.get("ready_path", "/readyz"),
        timeout_s=float(health.get("timeout_s", 2.0)),
        progress_deadline_s=float(health.get("progress_deadline_s",
                                             settings.HANGAR_PROGRESS_DEADLINE_S)),
    )


def progress_deadline(version: AgentVersion) -> float:
    check = health_check(version)
    return check.progress_deadline_s if check else settings.HANGAR_PROGRESS_DEADLINE_S


def pattern_env(deployment: Deployment, version: AgentVersion) -> tuple[dict[str, str], set[str]]:
    """What the pattern gives instances (a stream's connection) and which of
    those names are secret; a source that cannot be resolved (its secret is
    gone) is a permanent failure of the launch, not a crash loop."""
    try:
        return get_pattern(deployment.agent.pattern).instance_env(deployment, version,
                                                                  secrets={})
    except Invalid as exc:
        words = "; ".join(str(m) for ms in exc.detail.values() for m in ms) \
            if isinstance(exc.detail, dict) else str(exc.detail)
        raise RuntimeFailure(f"stream source: {words}", permanent=True) from None


def instance_env(deployment: Deployment, version: AgentVersion, name: str) -> dict[str, str]:
    env, _ = pattern_env(deployment, version)  # the version's own env may override it
    env.update({str(k): str(v) for k, v in (version.env or {}).items()})
    refs = list(version.secret_refs or [])
    if refs:
        values = dict(Secret.objects.filter(team_id=deployment.agent.team_id, name__in=refs)
                      .values_list("name", "value"))
        missing = sorted(set(refs) - set(values))
        if missing:
            raise RuntimeFailure(f"secret(s) not found: {', '.join(missing)}", permanent=True)
        env.update(values)
    env.update({
        "HANGAR_DEPLOYMENT": str(deployment.pk),
        "HANGAR_INSTANCE": name,
        "HANGAR_AGENT": deployment.agent.slug,
        "HANGAR_ENVIRONMENT": deployment.environment,
        "HANGAR_VERSION": str(version.number),
        "AGENT_MODE": env.get("AGENT_MODE", deployment.agent.pattern),
        "OTEL_SERVICE_NAME": f"{deployment.agent.team.slug}.{deployment.agent.slug}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.HANGAR_OTLP_ENDPOINT,
    })
    if deployment.ingest_token:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization=Bearer {deployment.ingest_token}"
    return env


def instance_spec(deployment: Deployment, row: Instance) -> InstanceSpec:
    version = row.version or deployment.version
    return InstanceSpec(
        deployment_id=deployment.pk, name=row.name, generation=row.generation,
        team=deployment.agent.team.slug, agent=deployment.agent.slug,
        pattern=deployment.agent.pattern, image=version.image, bundle=version.bundle,
        command=tuple(version.command or ()), env=instance_env(deployment, version, row.name),
        cpu=float(version.cpu), memory_mb=version.memory_mb, port=row.port,
        health=health_check(version), version=str(version.number),
    )


def deployment_spec(run: Pass) -> DeploymentSpec:
    """The whole deployment, for ``features.manages_replicas`` drivers. Names
    come from the driver; secret values (team secrets, the ingest token) go
    to ``secret_env`` (a Secret object), never into the pod template."""
    d, driver = run.deployment, run.primary
    version = d.version
    names = driver.managed_names(deployment_id=d.pk, agent=d.agent.slug,
                                 environment=d.environment)
    template, secret_env = managed_template(run, version, names)
    autoscale = lag_scaling = None
    # The runtime autoscales itself when it can (an HPA; KEDA for the lag);
    # otherwise Hangar's autoscaler changes the replicas applied here.
    signal = run.pattern.autoscaling_signal(d) or d.autoscale_signal
    if signal == "lag" and driver.autoscales(signal):
        lag_scaling = _lag_scaling(run, version)
    elif signal and signal != "lag" and d.autoscale_target and driver.autoscales(signal):
        autoscale = Autoscale(min_replicas=d.autoscale_min or 1,
                              max_replicas=d.autoscale_max or d.replicas,
                              signal=signal, target=d.autoscale_target)
    desired = run.pattern.desired(d, version, features=driver.features)
    replicas, rollout = desired.replicas, None
    if d.revision_id:  # a rollout in charge (deployments.traffic): two revisions
        replicas, rollout = tracks.rollout_split(
            run, desired.replicas, lambda v: managed_template(run, v, names))
    return DeploymentSpec(
        deployment_id=d.pk, name=names.deployment, generation=d.generation,
        replicas=replicas, template=template,  # batch: 0 (its jobs are Jobs)
        secret_env=secret_env, autoscale=autoscale, lag_scaling=lag_scaling,
        restarted_at=d.restarted_at.isoformat() if d.restarted_at else "",
        revision=str(d.revision.number) if d.revision_id else "", rollout=rollout,
        **desired.spec_extras)


def managed_template(run: Pass, version: AgentVersion, names: ManagedNames
                     ) -> tuple[InstanceSpec, dict[str, str]]:
    """The pods' template for ``version`` and the secret part of its env."""
    d = run.deployment
    env = instance_env(d, version, names.instance_env)
    secret_names = (set(version.secret_refs or ()) | {"OTEL_EXPORTER_OTLP_HEADERS"}
                    | pattern_env(d, version)[1])
    template = InstanceSpec(
        deployment_id=d.pk, name=names.template, generation=d.generation,
        team=d.agent.team.slug, agent=d.agent.slug, pattern=d.agent.pattern,
        image=version.image, command=tuple(version.command or ()),
        env={k: v for k, v in env.items() if k not in secret_names},
        cpu=float(version.cpu), memory_mb=version.memory_mb, port=version.port,
        health=health_check(version), version=str(version.number))
    return template, {k: v for k, v in env.items() if k in secret_names}


def _lag_scaling(run: Pass, version: AgentVersion) -> LagScaling | None:
    """The stream's lag policy for the runtime's own scaler (KEDA), with the
    same thresholds Hangar's lag autoscaler would use."""
    d = run.deployment
    try:
        return run.pattern.lag_scaling(
            d, version, policy=lag_policy(d, run.pattern.settings(version)))
    except Invalid as exc:
        words = "; ".join(str(m) for ms in exc.detail.values() for m in ms) \
            if isinstance(exc.detail, dict) else str(exc.detail)
        raise RuntimeFailure(f"stream source: {words}", permanent=True) from None
