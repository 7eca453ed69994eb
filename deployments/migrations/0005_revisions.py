"""Revisions: every deployment gets revision 1 from its current spec, and the
instances running the deployment's version point at it. Instances of another
version (a rollout under way) or marked for restart (no version) get no
revision, so the next pass replaces them as before.

The spec and digest are computed here as ``deployments.revisions.resolve`` does
today, frozen so that later changes there do not change this migration.
"""
import hashlib
import hmac
import json
from decimal import Decimal

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


SPEC_FIELDS = ("image", "bundle", "command", "env", "secret_refs", "cpu", "memory_mb", "port",
               "health", "model_settings", "pattern_settings")


def _fingerprint(name, value):
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{name}\0{value}".encode(), hashlib.sha256)
    return "hmac:" + mac.hexdigest()[:16]


def first_revisions(apps, schema_editor):
    Deployment = apps.get_model("deployments", "Deployment")
    Instance = apps.get_model("deployments", "Instance")
    Revision = apps.get_model("deployments", "Revision")
    Secret = apps.get_model("deployments", "Secret")
    for deployment in Deployment.objects.filter(revision__isnull=True).select_related(
            "version", "agent"):
        version = deployment.version
        spec = {name: getattr(version, name) for name in SPEC_FIELDS}
        spec["cpu"] = str(Decimal(spec["cpu"]).normalize())
        spec = {"version": version.number, **spec}
        refs = sorted(set(version.secret_refs or ()))
        values = dict(Secret.objects.filter(team_id=deployment.agent.team_id, name__in=refs)
                      .values_list("name", "value"))
        spec["secrets"] = {ref: _fingerprint(ref, values[ref]) if ref in values else None
                           for ref in refs}
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        revision = Revision.objects.create(
            deployment=deployment, number=1, version=version, spec=spec,
            digest="sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
            cause="first revision (the deployment's spec when revisions were introduced)",
            actor_label="migration")
        Deployment.objects.filter(pk=deployment.pk).update(revision=revision)
        Instance.objects.filter(deployment=deployment, version=version).update(revision=revision)


class Migration(migrations.Migration):

    dependencies = [
        ('deployments', '0004_samples'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='deployment',
            name='restarted_at',
            field=models.DateTimeField(blank=True, editable=False, help_text='instances created before this are replaced by a rolling pass', null=True),
        ),
        migrations.AddField(
            model_name='deployment',
            name='revision_history_limit',
            field=models.PositiveIntegerField(default=10, help_text='how many revisions to keep (revisions an instance still runs are kept too)', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100)]),
        ),
        migrations.CreateModel(
            name='Revision',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('number', models.PositiveIntegerField()),
                ('spec', models.JSONField()),
                ('digest', models.CharField(max_length=71)),
                ('cause', models.CharField(blank=True, max_length=200)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('actor_label', models.CharField(blank=True, max_length=150)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('deployment', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='revisions', to='deployments.deployment')),
                ('version', models.ForeignKey(help_text='empty once the version is deleted; the spec snapshot stays', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='deployments.agentversion')),
            ],
            options={
                'ordering': ['deployment', '-number'],
            },
        ),
        migrations.AddField(
            model_name='deployment',
            name='revision',
            field=models.ForeignKey(blank=True, editable=False, help_text='the revision instances should run (see Revision)', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='deployments.revision'),
        ),
        migrations.AddField(
            model_name='instance',
            name='revision',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='instances', to='deployments.revision'),
        ),
        migrations.AddConstraint(
            model_name='revision',
            constraint=models.UniqueConstraint(fields=('deployment', 'number'), name='revision_deployment_number_unique'),
        ),
        migrations.RunPython(first_revisions, migrations.RunPython.noop, elidable=True),
    ]
