"""PostgreSQL announces every change to what a device's token proves (its
state, its state version, the token itself, the row gone) on the channel
``hangar_edge_device``, the token hash as payload: the web processes' device
caches (``edge.devicecache``) drop the entry when the change commits. A
trigger, so no write path can forget it; last-seen and status writes change
none of those columns and announce nothing."""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION hangar_edge_device_notify() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('hangar_edge_device', OLD.token_hash);
        RETURN OLD;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state
            OR NEW.state_version IS DISTINCT FROM OLD.state_version
            OR NEW.token_hash IS DISTINCT FROM OLD.token_hash
            OR NEW.group_id IS DISTINCT FROM OLD.group_id
            OR NEW.team_id IS DISTINCT FROM OLD.team_id THEN
        PERFORM pg_notify('hangar_edge_device', OLD.token_hash);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER edge_device_notify
    AFTER UPDATE OR DELETE ON edge_device
    FOR EACH ROW EXECUTE FUNCTION hangar_edge_device_notify();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS edge_device_notify ON edge_device;
DROP FUNCTION IF EXISTS hangar_edge_device_notify();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("edge", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
