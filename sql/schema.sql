-- workflow_ext schema: types, tables and indexes. Runs first (bootstrap);
-- functions are created by pgrx after it, triggers and privileges in
-- finalize.sql.

-- The full event vocabulary of the Workflow DevKit, spec 3 (4.x) and spec
-- 5+ (attr_set, noop). Order matters only for display; the Rust side
-- (src/rules/lifecycle.rs, EventType::ALL) lists the same, in this order (a
-- pg_test in src/write/append.rs compares them).
CREATE TYPE workflow_ext.event_type AS ENUM (
    'run_created', 'run_started', 'run_completed', 'run_failed', 'run_cancelled',
    'step_created', 'step_started', 'step_retrying', 'step_completed', 'step_failed',
    'wait_created', 'wait_completed',
    'hook_created', 'hook_received', 'hook_disposed', 'hook_conflict',
    'attr_set', 'noop'
);

-- The event log. Append-only: rows enter through the BEFORE INSERT trigger
-- (which assigns id and seq and checks the lifecycle) and leave only with a
-- whole finished run through purge_runs().
CREATE TABLE workflow_ext.events (
    id             text        NOT NULL,
    run_id         text        NOT NULL,
    seq            bigint      NOT NULL,   -- dense per run: 1, 2, 3 … in commit order
    type           workflow_ext.event_type NOT NULL,
    correlation_id text,                   -- NULL for run-level events
    payload        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (run_id, seq),
    CONSTRAINT events_id_key UNIQUE (id)
);

-- One creation per run and correlation id, and one value per keyed
-- attribute (spec 5's attr_set with a correlation id). NULLS NOT DISTINCT
-- makes a second run_created (correlation_id NULL) collide too. The name is
-- the one the DevKit's world-postgres maps to its benign "already exists"
-- error; attach puts the same index on an attached table
-- (workflow_ext.create_creation_index in attach.sql).
CREATE UNIQUE INDEX workflow_events_entity_creation_unique
    ON workflow_ext.events (run_id, correlation_id, type) NULLS NOT DISTINCT
    WHERE type IN ('run_created', 'step_created', 'wait_created', 'hook_created')
       OR (type = 'attr_set' AND correlation_id IS NOT NULL);

-- An entity's last event (its state) in one backward index step.
CREATE INDEX events_entity_seq
    ON workflow_ext.events (run_id, correlation_id, seq)
    WHERE correlation_id IS NOT NULL;

-- Hooks by token, for replay's check of a run's tokens against other runs.
CREATE INDEX events_hook_token
    ON workflow_ext.events ((payload ->> 'token'))
    WHERE type = 'hook_created';

-- Per-run lock and counters of every protected log (workflow_ext.events and
-- each attached table). The row is locked (by bumping last_seq) by a
-- transaction's first append to its run and held to commit, which
-- serializes appends to one run and nothing else; the transaction's later
-- appends to the run are counted in memory and written back once before the
-- commit (src/write/run_cache.rs).
-- Internal: clients read runs through the log.
CREATE TABLE workflow_ext.runs (
    run_id      text        NOT NULL,
    state       text        NOT NULL,
    last_seq    bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,           -- set when the run reaches a terminal state
    log         regclass    NOT NULL,  -- the protected log the run is in (these two last: added in 0.3.0)
    last_event_at timestamptz NOT NULL DEFAULT now(),  -- its last append (not indexed: the bump stays HOT)
    CONSTRAINT runs_pkey PRIMARY KEY (log, run_id)
) WITH (fillfactor = 80);              -- room for HOT updates of last_seq

CREATE INDEX runs_finished_at ON workflow_ext.runs (finished_at)
    WHERE finished_at IS NOT NULL;
-- The runs not finished yet, per log: what metrics() and stuck_runs() read,
-- so their cost follows the active runs, not the log's size.
CREATE INDEX runs_active ON workflow_ext.runs (log, created_at)
    WHERE finished_at IS NULL;

-- Fan-in barriers: one row per join, one per distinct arrived member.
-- The run rows of logs that Citus distributes (workflow_ext.distribute(),
-- sql/citus.sql): the same columns as runs, keyed by the logical log's
-- name (an OID differs per node and does not survive a shard move) and
-- distributed by run_id, co-located with the logs, so a run's row and its
-- events are on one node and move together. The trigger writes the shard
-- of it next to the log's shard (src/pg/citus.rs). Empty without Citus.
CREATE TABLE workflow_ext.distributed_runs (
    run_id        text        NOT NULL,
    log           text        NOT NULL,  -- the log, as regclass prints it qualified
    state         text        NOT NULL,
    last_seq      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_event_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT distributed_runs_pkey PRIMARY KEY (run_id, log)
) WITH (fillfactor = 80);
-- The same for logs whose run_id is varchar (the DevKit's): Citus co-locates
-- only tables whose distribution columns have one type.
CREATE TABLE workflow_ext.distributed_runs_varchar (
    run_id        varchar     NOT NULL,
    log           text        NOT NULL,
    state         text        NOT NULL,
    last_seq      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_event_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT distributed_runs_varchar_pkey PRIMARY KEY (run_id, log)
) WITH (fillfactor = 80);

CREATE TABLE workflow_ext.joins (
    run_id     text        NOT NULL,
    join_key   text        NOT NULL,
    expected   integer     NOT NULL CHECK (expected > 0),
    arrived    integer     NOT NULL DEFAULT 0,
    fired_at   timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, join_key)
);

CREATE TABLE workflow_ext.join_members (
    run_id     text        NOT NULL,
    join_key   text        NOT NULL,
    member_key text        NOT NULL,
    arrived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, join_key, member_key)
);

-- Tokens held by active hooks: one row per token, database-wide (a token
-- addresses a webhook from outside, so two active hooks holding one would
-- wake two workflows with one delivery). Derived from the log, never written
-- by clients: a hook_created whose payload carries "token" takes it (the
-- unique constraint decides between racing creators), its hook_disposed or
-- its run's terminal event releases it; rebuild_hook_tokens() recomputes it.
CREATE TABLE workflow_ext.hook_tokens (
    token          text        NOT NULL,
    run_id         text        NOT NULL,
    correlation_id text        NOT NULL,
    event_id       text        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    -- The name is the contract: a losing creator's 23505 names it.
    CONSTRAINT workflow_hook_token_unique PRIMARY KEY (token)
);
CREATE INDEX hook_tokens_run ON workflow_ext.hook_tokens (run_id, correlation_id);

-- The protected logs: workflow_ext.events, and every table attach put under
-- the extension, with what attach did to it (detach undoes exactly that).
-- Read through the view workflow_ext.attached_logs.
CREATE TABLE workflow_ext.logs (
    relation        regclass    PRIMARY KEY,
    accept_existing boolean     NOT NULL,  -- attached with anomalies in its past
    seq_added       boolean     NOT NULL,  -- attach added the seq column (detach drops it)
    numbered        bigint      NOT NULL,  -- existing rows attach numbered
    replaced_index  text,                  -- the table's own creation index attach replaced (detach restores it)
    creation_index  text        NOT NULL,  -- the extension's creation index, as pg_get_indexdef prints it
    added_indexes   text[]      NOT NULL,  -- the other indexes attach created
    attached_at     timestamptz NOT NULL DEFAULT now(),
    attached_by     text        NOT NULL DEFAULT session_user
);
INSERT INTO workflow_ext.logs (relation, accept_existing, seq_added, numbered, creation_index, added_indexes)
VALUES ('workflow_ext.events', false, false, 0,
        pg_catalog.pg_get_indexdef('workflow_ext.workflow_events_entity_creation_unique'::regclass), '{}');

-- Keep the data in pg_dump output (extension tables are skipped otherwise).
-- Restore data with triggers disabled (pg_restore --disable-triggers, as a
-- superuser): the dump already holds assigned ids and seqs.
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.events', '');
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.runs', '');
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.joins', '');
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.join_members', '');
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.hook_tokens', '');
-- The extension's own row is made by CREATE EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.logs', 'WHERE relation <> ''workflow_ext.events''::regclass');

-- The bootstrap ledger: one row per applied bootstrap name. Readable by all,
-- written only by workflow_ext.bootstrap() and bootstrap_end().
CREATE TABLE workflow_ext.bootstraps (
    name       text        PRIMARY KEY,
    checksum   text,                   -- sha256 of the DDL (hex), or the one given to bootstrap_begin
    ddl        text,                   -- the DDL text; NULL for a migrator run by bootstrap_begin/end
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text        NOT NULL    -- session_user of the applying call
);
SELECT pg_catalog.pg_extension_config_dump('workflow_ext.bootstraps', '');
