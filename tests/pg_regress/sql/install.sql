-- The extension (installed by fixture_extension) lives in schema workflow_ext
-- with the objects below.
SELECT extname, extversion, extrelocatable, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'workflow_ext';
-- PostgreSQL 17+ also records the types a table or type brings with it (a
-- table's row type, a type's array type) as extension members (upstream
-- commit e5bc9454e5); they are left out so every major lists the same.
SELECT pg_describe_object(classid, objid, 0) AS object
  FROM pg_depend d WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'workflow_ext')
   AND NOT EXISTS (SELECT FROM pg_type t
                    WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                      AND (EXISTS (SELECT FROM pg_type a WHERE a.typarray = t.oid)
                           OR EXISTS (SELECT FROM pg_class c
                                       WHERE c.oid = t.typrelid AND c.relkind <> 'c')))
 ORDER BY 1;
-- The full vocabulary.
SELECT enum_range(NULL::workflow_ext.event_type);
-- The partial unique index over creation events, NULLS NOT DISTINCT.
SELECT indexdef FROM pg_indexes
 WHERE schemaname = 'workflow_ext' AND tablename = 'events' ORDER BY indexname;
-- Triggers fire ALWAYS (also under session_replication_role = replica).
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'workflow_ext.events'::regclass AND NOT tgisinternal ORDER BY 1;
-- Which functions pin search_path (the write path qualifies every name
-- instead) or set planner options; who runs as definer.
SELECT p.proname, p.prosecdef, p.proconfig
  FROM pg_proc p WHERE p.pronamespace = 'workflow_ext'::regnamespace ORDER BY 1;
-- Event ids: wevt_ + 26 Crockford base32 characters, monotonic in a session.
SELECT workflow_ext.new_event_id() ~ '^wevt_[0-9A-HJKMNP-TV-Z]{26}$' AS well_formed;
SELECT bool_and(a < b) AS monotonic FROM (
  SELECT id AS a, lead(id) OVER (ORDER BY n) AS b
    FROM (SELECT n, workflow_ext.new_event_id() AS id FROM generate_series(1, 1000) n) s) w
 WHERE b IS NOT NULL;
