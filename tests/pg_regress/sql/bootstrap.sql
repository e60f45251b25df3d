-- bootstrap(name, ddl): once per database, versioned by name, with a ledger.
SELECT workflow_ext.bootstrap('graphile_worker@v1', $$
  create schema if not exists graphile_worker;
  create table if not exists graphile_worker.migrations(id int primary key, ts timestamptz default now() not null);
  alter table graphile_worker.migrations add column if not exists breaking boolean not null default false
$$) AS applied;
SELECT workflow_ext.bootstrap('graphile_worker@v1', $$
  create schema if not exists graphile_worker;
  create table if not exists graphile_worker.migrations(id int primary key, ts timestamptz default now() not null);
  alter table graphile_worker.migrations add column if not exists breaking boolean not null default false
$$) AS applied_again;
\d graphile_worker.migrations
SELECT name, length(checksum) AS checksum_len, applied_by, applied_at <= now() AS recorded
  FROM workflow_ext.bootstraps ORDER BY name;
-- The same name with another DDL is an error that says so.
SELECT try($$SELECT workflow_ext.bootstrap('graphile_worker@v1', 'create schema if not exists other')$$);
-- A failing DDL rolls back completely and leaves no ledger row...
SELECT try($$SELECT workflow_ext.bootstrap('app@v1', 'create table app_t (a int); create table app_t (a int)')$$);
SELECT to_regclass('app_t') AS table_left, count(*) AS ledger_rows
  FROM workflow_ext.bootstraps WHERE name = 'app@v1';
-- ...and a later call can try again.
SELECT workflow_ext.bootstrap('app@v1', 'create table app_t (a int)') AS applied;
-- Bad input.
SELECT try($$SELECT workflow_ext.bootstrap(NULL, 'select 1')$$);
SELECT try($$SELECT workflow_ext.bootstrap('x', NULL)$$);
SELECT try($$SELECT workflow_ext.bootstrap('x', '   ')$$);
SELECT try($$SELECT workflow_ext.bootstrap('', 'select 1')$$);
-- Privileges: the DDL runs as the caller; the function is no way around them.
SET client_min_messages = warning;
DROP ROLE IF EXISTS wfx_boot;
RESET client_min_messages;
CREATE ROLE wfx_boot;
SELECT workflow_ext.grant_access('wfx_boot', 'migrator');
SET ROLE wfx_boot;
SELECT try($$SELECT workflow_ext.bootstrap('evil@v1', 'create schema evil_schema')$$);
SELECT try($$SELECT workflow_ext.bootstrap('evil@v2', 'drop table graphile_worker.migrations')$$);
SELECT try($$INSERT INTO workflow_ext.bootstraps (name, checksum, ddl, applied_by) VALUES ('x', 'x', 'x', 'x')$$);
SELECT count(*) AS ledger_rows_visible FROM workflow_ext.bootstraps;
RESET ROLE;
SELECT count(*) AS evil_rows FROM workflow_ext.bootstraps WHERE name LIKE 'evil%';
DROP OWNED BY wfx_boot;
DROP ROLE wfx_boot;
-- Under REPEATABLE READ / SERIALIZABLE the snapshot predates the lock wait:
-- both shapes refuse (0A000) rather than risk applying a migration twice.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT try($$SELECT workflow_ext.bootstrap('rr@v1', 'create table rr_t (a int)')$$);
SELECT try($$SELECT workflow_ext.bootstrap_begin('rr@v2')$$);
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT try($$SELECT workflow_ext.bootstrap_begin('rr@v3')$$);
COMMIT;
SELECT count(*) AS rr_rows FROM workflow_ext.bootstraps WHERE name LIKE 'rr@%';
-- bootstrap_begin / bootstrap_end misuse.
SELECT try($$SELECT workflow_ext.bootstrap_end('never@v1')$$);
SELECT try($$SELECT workflow_ext.bootstrap_begin(NULL)$$);
SELECT try($$SELECT workflow_ext.bootstrap_begin('t@v1', timeout => '-1 s')$$);
SELECT try($$SELECT workflow_ext.bootstrap_begin('t@v1', timeout => '0')$$);
SELECT workflow_ext.bootstrap_begin('t@v1', timeout => '1 s', checksum => 'abc') AS go;
SELECT try($$SELECT workflow_ext.bootstrap_begin('t@v1')$$);
SELECT workflow_ext.bootstrap_end('t@v1');
SELECT workflow_ext.bootstrap_begin('t@v1', checksum => 'abc') AS go_again;
SELECT try($$SELECT workflow_ext.bootstrap_begin('t@v1', checksum => 'xyz')$$);
SELECT name, checksum, ddl IS NULL AS no_ddl FROM workflow_ext.bootstraps WHERE name = 't@v1';
