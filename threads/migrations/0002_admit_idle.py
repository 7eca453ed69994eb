"""``hangar_threads_admit_idle``: a run on an idle thread admitted in one round
trip (``threads.actions.runs.admit``). PostgreSQL only; elsewhere the ORM path
does it all."""
from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION hangar_threads_admit_idle(
    p_team bigint, p_thread uuid, p_run uuid, p_agent bigint, p_environment text,
    p_strategy text, p_input jsonb, p_options jsonb, p_metadata jsonb,
    p_timeout double precision, p_owner text, p_lease_s double precision)
RETURNS TABLE (outcome text, run_position bigint, run_at timestamptz, thread_values jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    found_thread record;
    at timestamptz;
BEGIN
    SELECT t.runs_made, t."values", t.updated_at INTO found_thread FROM threads_thread t
     WHERE t.id = p_thread AND t.team_id = p_team FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::bigint, NULL::timestamptz, NULL::jsonb;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM threads_threadrun r WHERE r.thread_id = p_thread
               AND r.status IN ('pending', 'running')) THEN
        RETURN QUERY SELECT 'busy'::text, NULL::bigint, NULL::timestamptz, NULL::jsonb;
        RETURN;
    END IF;
    -- Read once the thread is held: a run ended by the one before us in the lock's
    -- queue ended before this one starts — also when the gateway's clock, which
    -- stamped that end (and the thread's updated_at), is a little ahead of ours.
    at := GREATEST(clock_timestamp(), found_thread.updated_at);
    INSERT INTO threads_threadrun (
        id, team_id, thread_id, agent_id, environment, position, status,
        multitask_strategy, applied, input, options, metadata, output, partial, error,
        owner, lease_until, timeout_s, trace_id, replica, cron_id,
        created_at, started_at, ended_at, updated_at)
    VALUES (
        p_run, p_team, p_thread, p_agent, p_environment, found_thread.runs_made + 1,
        'running', p_strategy, '', p_input, p_options, p_metadata, NULL, NULL, '',
        p_owner, at + make_interval(secs => p_lease_s), p_timeout, '', '', NULL,
        at, at, NULL, at);
    UPDATE threads_thread SET status = 'busy', agent_id = p_agent,
           environment = p_environment, runs_made = found_thread.runs_made + 1,
           updated_at = at
     WHERE id = p_thread;
    RETURN QUERY SELECT 'started'::text, found_thread.runs_made + 1, at,
                        found_thread."values";
END $$;
"""
DROP = "DROP FUNCTION IF EXISTS hangar_threads_admit_idle(bigint, uuid, uuid, bigint, text, " \
       "text, jsonb, jsonb, jsonb, double precision, text, double precision)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("threads", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
