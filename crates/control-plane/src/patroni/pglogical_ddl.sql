-- berth's DDL replication between the nodes of a database (ADR 019), installed by the
-- control plane on every node's primary in the spec's database. Idempotent.
--
-- A DDL command run on one node is queued, as pglogical.replicate_ddl_command would queue it,
-- in pglogical.queue (replication set ddl_sql), and every other node's subscription replays it.
-- replicate_ddl_command itself cannot be called here: it would run the command a second time
-- on this node. A replayed command does not come back: pglogical's apply worker runs with
-- session_replication_role = replica, where these (ORIGIN) event triggers do not fire, and
-- the subscriptions forward no origin but their provider's own.
CREATE SCHEMA IF NOT EXISTS berth;
REVOKE ALL ON SCHEMA berth FROM PUBLIC;
GRANT USAGE ON SCHEMA berth TO PUBLIC;

-- Adds a new table to a replication set: `default` with a primary key, else
-- `default_insert_only` (pglogical refuses to replicate UPDATE and DELETE of a table without
-- one). SECURITY DEFINER: the replication sets are the superuser's, and the replayed command
-- that calls it on the other nodes runs as the role that created the table.
CREATE OR REPLACE FUNCTION berth.replicate_table(t regclass)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM pglogical.replication_set_add_table(
    CASE WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = t AND contype = 'p')
         THEN 'default' ELSE 'default_insert_only' END,
    t, false);
END $f$;
REVOKE ALL ON FUNCTION berth.replicate_table(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION berth.replicate_table(regclass) TO PUBLIC;

-- Queues `command` for the other nodes, to run there as the session's login role, and adds
-- each table of `tables` to a replication set here and, after the command, there.
-- SECURITY DEFINER: the queue is the superuser's; a caller only ever queues a command that
-- runs as itself. The message is the superuser's and switches to the caller's role for the
-- command alone: pglogical's apply worker, which runs a message as its role, has more to do
-- in its own schema afterwards, which the caller's role may not reach.
CREATE OR REPLACE FUNCTION berth.queue_ddl(command text, tables regclass[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  t regclass;
  tail text := '';
BEGIN
  FOREACH t IN ARRAY coalesce(tables, '{}') LOOP
    PERFORM berth.replicate_table(t);
    tail := tail || format(E'SELECT berth.replicate_table(%L::regclass);\n', t::text);
  END LOOP;
  INSERT INTO pglogical.queue (queued_at, role, replication_sets, message_type, message)
  VALUES (now(), current_user, ARRAY['ddl_sql'], 'Q',
          to_json(format(E'SET LOCAL ROLE %I;\n%s\n;\nRESET ROLE;\n%s', session_user, command, tail)));
END $f$;
REVOKE ALL ON FUNCTION berth.queue_ddl(text, regclass[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION berth.queue_ddl(text, regclass[]) TO PUBLIC;

-- sql_drop runs before ddl_command_end: a drop of temporary objects alone stays here (the
-- other nodes have none of them).
CREATE OR REPLACE FUNCTION berth.ddl_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects()
                 WHERE original AND NOT is_temporary) THEN
    PERFORM pg_catalog.set_config('berth.ddl_local', 'on', true);
  END IF;
END $f$;

CREATE OR REPLACE FUNCTION berth.ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql AS $f$
DECLARE
  query text := pg_catalog.current_query();
  local_only boolean := coalesce(pg_catalog.current_setting('berth.ddl_local', true), '') = 'on';
  c record;
  counted int := 0;
  tables regclass[] := '{}';
BEGIN
  PERFORM pg_catalog.set_config('berth.ddl_local', '', true);
  IF pg_catalog.current_setting('session_replication_role') = 'replica'
     OR coalesce(pg_catalog.current_setting('berth.ddl_replication', true), '') = 'off'
     OR local_only
     -- One query of several DDL commands (a DO block, a multi-statement string) is queued
     -- once: it is the query that is replayed.
     OR coalesce(pg_catalog.current_setting('berth.ddl_queued', true), '') = pg_catalog.md5(query) THEN
    RETURN;
  END IF;
  FOR c IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
    IF c.in_extension OR c.schema_name IN ('pglogical', 'berth') OR c.schema_name LIKE 'pg\_temp%' THEN
      CONTINUE;
    END IF;
    counted := counted + 1;
    IF c.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') AND c.object_type = 'table' THEN
      tables := tables || c.objid::regclass;
    END IF;
  END LOOP;
  -- A drop reports no command here; anything else that reported none touched only
  -- temporary objects or pglogical's and berth's own.
  IF counted = 0 AND TG_TAG NOT LIKE 'DROP %' THEN
    RETURN;
  END IF;
  PERFORM berth.queue_ddl(
    pg_catalog.format(E'SET LOCAL search_path = %s;\n%s', pg_catalog.current_setting('search_path'), query),
    tables);
  PERFORM pg_catalog.set_config('berth.ddl_queued', pg_catalog.md5(query), true);
END $f$;

DROP EVENT TRIGGER IF EXISTS berth_ddl_sql_drop;
CREATE EVENT TRIGGER berth_ddl_sql_drop ON sql_drop EXECUTE FUNCTION berth.ddl_sql_drop();
DROP EVENT TRIGGER IF EXISTS berth_ddl_command_end;
CREATE EVENT TRIGGER berth_ddl_command_end ON ddl_command_end
  WHEN TAG IN (
    'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'DROP TABLE',
    'CREATE INDEX', 'ALTER INDEX', 'DROP INDEX',
    'CREATE SEQUENCE', 'ALTER SEQUENCE', 'DROP SEQUENCE',
    'CREATE VIEW', 'ALTER VIEW', 'DROP VIEW',
    'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW', 'DROP MATERIALIZED VIEW',
    'CREATE SCHEMA', 'ALTER SCHEMA', 'DROP SCHEMA',
    'CREATE FUNCTION', 'ALTER FUNCTION', 'DROP FUNCTION',
    'CREATE PROCEDURE', 'ALTER PROCEDURE', 'DROP PROCEDURE',
    'CREATE TYPE', 'ALTER TYPE', 'DROP TYPE',
    'CREATE DOMAIN', 'ALTER DOMAIN', 'DROP DOMAIN',
    'CREATE TRIGGER', 'ALTER TRIGGER', 'DROP TRIGGER',
    'CREATE EXTENSION', 'ALTER EXTENSION', 'DROP EXTENSION',
    'COMMENT', 'GRANT', 'REVOKE', 'ALTER DEFAULT PRIVILEGES')
  EXECUTE FUNCTION berth.ddl_command_end();
