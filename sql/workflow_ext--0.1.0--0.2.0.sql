-- workflow_ext 0.1.0 → 0.2.0 (ALTER EXTENSION workflow_ext UPDATE).
-- Keep in step with sql/schema.sql and sql/functions.sql: the upgrade test
-- compares an upgraded install with a fresh one, object by object.

-- bootstrap_begin/end record migrator runs, which have no DDL text and may
-- have no checksum.
ALTER TABLE workflow_ext.bootstraps ALTER COLUMN checksum DROP NOT NULL;
ALTER TABLE workflow_ext.bootstraps ALTER COLUMN ddl DROP NOT NULL;

CREATE FUNCTION workflow_ext.bootstrap_begin(name text, timeout interval DEFAULT NULL, checksum text DEFAULT NULL)
RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_begin_wrapper';

CREATE FUNCTION workflow_ext.bootstrap_end(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'bootstrap_end_wrapper';
