-- attach resolves names by OID: quotes, dots, case, multibyte names, and a
-- look-alike schema another role owns cannot mislead it; a TEMP table is
-- refused.
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA "My Schema";
CREATE SCHEMA "a.b";
CREATE SCHEMA "Upper";
-- The look-alike: schema "upper" (lower case) of another role, holding an
-- index of the name attach looks for.
CREATE SCHEMA upper AUTHORIZATION wfx_sec_login;
SET SESSION AUTHORIZATION wfx_sec_login;
CREATE TABLE upper.decoy (run_id text, correlation_id text, type text);
CREATE UNIQUE INDEX workflow_events_entity_creation_unique ON upper.decoy (run_id);
RESET SESSION AUTHORIZATION;
CREATE TABLE "My Schema"."Events" (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text);
CREATE TABLE "a.b"."x.y" (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text);
CREATE TABLE "Upper"."T" (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text);
-- 31 'é' (62 bytes): both index names attach makes must fit in 63 bytes.
CREATE SCHEMA "é";
CREATE TABLE "é".ééééééééééééééééééééééééééééééé (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text);
SELECT workflow_ext.attach('"My Schema"."Events"') AS numbered;
SELECT workflow_ext.attach('"a.b"."x.y"') AS numbered;
SELECT workflow_ext.attach('"Upper"."T"') AS numbered;
SELECT workflow_ext.attach('"é".ééééééééééééééééééééééééééééééé') AS numbered;
SELECT log, added FROM (SELECT l.relation::text AS log, unnest(l.added_indexes) AS added
                          FROM workflow_ext.logs l WHERE l.relation::text NOT LIKE 'workflow%') a ORDER BY 1, 2;
INSERT INTO "a.b"."x.y" (run_id, type) VALUES ('r', 'run_created') RETURNING seq;
SELECT workflow_ext.detach(l.relation) FROM workflow_ext.logs l WHERE l.relation::text NOT LIKE 'workflow%';
CREATE TEMP TABLE temp_events (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text);
SELECT workflow_ext.attach('temp_events');
-- A partition, and a table with inheritance children, are refused too.
CREATE TABLE parted (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text) PARTITION BY LIST (run_id);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN ('a');
SELECT workflow_ext.attach('parted_a');
SELECT workflow_ext.attach('parted');
SELECT * FROM superusers;
