"""Invariants the models guard themselves."""
from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from deployments.models import AgentVersion, AppendOnlyError, AuditEvent, ImmutableError, Secret

from .factories import AgentFactory, SecretFactory, TargetFactory, VersionFactory


def test_versions_are_immutable(db):
    version = VersionFactory()
    version.image = "other:tag"
    with pytest.raises(ImmutableError):
        version.save()
    version.refresh_from_db()
    assert version.image == "hangar/reference-agent:latest"


def test_digest_is_a_content_hash_of_the_spec(db):
    agent = AgentFactory()
    a = VersionFactory(agent=agent, image="img:1", env={"A": "1", "B": "2"})
    b = VersionFactory(agent=agent, image="img:1", env={"B": "2", "A": "1"})
    c = VersionFactory(agent=agent, image="img:1", env={"A": "1", "B": "3"})
    assert a.digest.startswith("sha256:") and len(a.digest) == 71
    assert a.digest == b.digest  # key order does not matter
    assert a.digest != c.digest


def test_audit_log_is_append_only_in_the_orm(db):
    event = AuditEvent.objects.create(actor_label="x", action="test", source="system")
    event.action = "changed"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="changed")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()


def test_audit_log_is_append_only_in_postgresql(db):
    event = AuditEvent.objects.create(actor_label="x", action="test", source="system")
    for sql in ("UPDATE deployments_auditevent SET action = 'forged' WHERE id = %s",
                "DELETE FROM deployments_auditevent WHERE id = %s"):
        with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).action == "test"


def test_secrets_and_connections_are_encrypted_at_rest(db):
    secret = SecretFactory(value="sk-live-plaintext-value")
    target = TargetFactory(kind="docker", connection={"url": "tcp://h:2376",
                                                      "tls_key": "KEY-MATERIAL-123"})
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM deployments_secret WHERE id = %s", [secret.pk])
        stored_secret = cursor.fetchone()[0]
        cursor.execute("SELECT connection FROM deployments_target WHERE id = %s", [target.pk])
        stored_connection = cursor.fetchone()[0]
    assert stored_secret.startswith("fernet:")
    assert "sk-live-plaintext-value" not in stored_secret
    assert "KEY-MATERIAL-123" not in stored_connection and "tcp://h" not in stored_connection
    # ...and decrypt transparently.
    assert Secret.objects.get(pk=secret.pk).value == "sk-live-plaintext-value"
    target.refresh_from_db()
    assert target.connection["tls_key"] == "KEY-MATERIAL-123"


def test_wrong_encryption_key_fails_loudly(db, settings):
    secret = SecretFactory(value="v")
    from cryptography.fernet import Fernet

    settings.HANGAR_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(ValueError, match="HANGAR_ENCRYPTION_KEY"):
        Secret.objects.get(pk=secret.pk)


def test_key_rotation_keeps_old_values_readable(db, settings):
    secret = SecretFactory(value="before-rotation")
    from cryptography.fernet import Fernet

    settings.HANGAR_ENCRYPTION_KEYS = [Fernet.generate_key().decode(),
                                       *settings.HANGAR_ENCRYPTION_KEYS]
    assert Secret.objects.get(pk=secret.pk).value == "before-rotation"


def test_version_numbering_is_per_agent(db):
    from deployments import actions
    from deployments.audit import SYSTEM

    agent, other = AgentFactory(), AgentFactory()
    numbers = [actions.create_version(agent, actor=SYSTEM, image=f"i:{n}").number
               for n in range(3)]
    assert numbers == [1, 2, 3]
    assert actions.create_version(other, actor=SYSTEM, image="x").number == 1
    assert AgentVersion.objects.filter(agent=agent).count() == 3
