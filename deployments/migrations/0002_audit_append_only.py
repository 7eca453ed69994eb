"""PostgreSQL refuses UPDATE and DELETE on the audit table (append-only)."""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION hangar_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER deployments_auditevent_append_only
    BEFORE UPDATE OR DELETE ON deployments_auditevent
    FOR EACH ROW EXECUTE FUNCTION hangar_audit_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS deployments_auditevent_append_only ON deployments_auditevent;
DROP FUNCTION IF EXISTS hangar_audit_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
