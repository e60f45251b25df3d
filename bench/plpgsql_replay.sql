-- plpgsql_replay(run_id, source): a PL/pgSQL replay of 0.2.0's rules (its
-- source checks and errors, replay order, anomaly codes and detail texts),
-- used as a speed baseline for workflow_ext.replay. It matched 0.2.0's
-- replay; the Rust replay has since gained checks, codes and texts it never
-- got, so on sources other than workflow_ext.events the two now differ
-- (BENCHMARKS.md, "plpgsql_replay.sql"). Benchmark only: not installed by
-- the extension.
--
-- One ordered query over the run's events, judged row by row in PL/pgSQL.
-- PL/pgSQL has no hash map, so the query itself numbers the run's distinct
-- correlation ids (dense_rank) and per-entity state lives in plain int/bigint
-- arrays indexed by (rank, kind): O(1) in-place reads and writes, where a
-- jsonb map would be copied on every update.
CREATE OR REPLACE FUNCTION public.plpgsql_replay(p_run_id text, p_source regclass DEFAULT 'workflow_ext.events')
RETURNS TABLE (seq bigint, event_id text, event_type text, correlation_id text, anomaly text, detail text)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  -- Event codes 1..17: positions in this array (the order of workflow_ext.event_type).
  c_types constant text[] := '{run_created,run_started,run_completed,run_failed,run_cancelled,'
    'step_created,step_started,step_retrying,step_completed,step_failed,wait_created,wait_completed,'
    'hook_created,hook_received,hook_disposed,hook_conflict,attr_set}';
  -- Kind per event code: 0 run, 1 step, 2 wait, 3 hook.
  c_kind constant int[] := '{0,0,0,0,0,1,1,1,1,1,2,2,3,3,3,3,0}';
  c_kind_name constant text[] := '{step,wait,hook}';
  -- States: 1..5 run pending/running/completed/failed/cancelled,
  -- 6..9 step pending/running/completed/failed, 10..11 wait waiting/completed,
  -- 12..14 hook active/disposed/conflict; 0 = entity never created.
  c_label constant text[] := '{pending,running,completed,failed,cancelled,pending,running,completed,failed,'
    'waiting,completed,active,disposed,conflict}';
  -- Entity state after an accepted entity event, per event code.
  c_after constant int[] := '{0,0,0,0,0,6,7,6,8,9,10,11,12,12,13,14,0}';

  v_name text; v_relkind text; v_cols text[]; v_missing text[]; v_has_seq boolean; v_sql text;
  -- the current row
  v_seq bigint; v_type text; v_corr text; v_id text; v_ev int; v_rank int;
  v_n bigint := 0;          -- events fed so far (1-based position)
  v_at bigint;              -- the event's seq, or its position
  v_last_seq bigint;        -- highest seq seen
  v_kind int; v_idx int; v_est int;
  v_viol int; v_vstate int; v_what text; v_pos bigint; v_after int;
  -- the run
  v_run_state int; v_run_since bigint; v_run_created bigint;
  -- entities: slot (rank - 1) * 3 + kind
  e_state int[] := '{}'; e_since bigint[] := '{}'; e_created bigint[] := '{}';
  v_cap int := 0; v_grow int;
BEGIN
  -- Arguments, as validate::ident.
  IF p_run_id IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'run_id must not be NULL';
  ELSIF p_run_id = '' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'run_id must not be empty';
  ELSIF octet_length(p_run_id) > 255 THEN
    RAISE EXCEPTION USING ERRCODE = '22001',
      MESSAGE = format('run_id is %s bytes long; at most 255 are allowed', octet_length(p_run_id));
  END IF;
  IF p_source IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'source must not be NULL';
  END IF;

  -- The source, as replay.rs inspect().
  SELECT cl.oid::regclass::text, cl.relkind::text,
         array_agg(att.attname::text) FILTER (WHERE att.attnum > 0 AND NOT att.attisdropped)
    INTO v_name, v_relkind, v_cols
    FROM pg_class cl LEFT JOIN pg_attribute att ON att.attrelid = cl.oid
   WHERE cl.oid = p_source
   GROUP BY cl.oid, cl.relkind;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '42P01',
      MESSAGE = format('source relation with OID %s does not exist', p_source::oid);
  END IF;
  IF v_relkind NOT IN ('r', 'p', 'v', 'm', 'f') THEN
    RAISE EXCEPTION USING ERRCODE = '42809',
      MESSAGE = format('source %s is not a table, view or materialized view', v_name);
  END IF;
  SELECT array_agg(need ORDER BY ord) INTO v_missing
    FROM unnest('{id,run_id,type,correlation_id}'::text[]) WITH ORDINALITY AS u(need, ord)
   WHERE NOT (need = ANY (coalesce(v_cols, '{}')));
  IF v_missing IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42703', MESSAGE = format(
      'source %s lacks column(s) %s; an event source needs id, run_id, type and correlation_id',
      v_name, array_to_string(v_missing, ', '));
  END IF;
  v_has_seq := 'seq' = ANY (v_cols);

  v_sql := format(
    'SELECT %s, type::text, correlation_id::text, id::text, array_position(%L::text[], type::text), '
    'dense_rank() OVER (ORDER BY correlation_id::text COLLATE "C")::int '
    'FROM %s WHERE run_id = $1 ORDER BY %s',
    CASE WHEN v_has_seq THEN 'seq::bigint' ELSE 'NULL::bigint' END,
    c_types, v_name,
    CASE WHEN v_name = 'workflow_ext.events' THEN 'seq'
         WHEN v_has_seq THEN 'seq, id::text COLLATE "C"'
         ELSE 'id::text COLLATE "C"' END);

  FOR v_seq, v_type, v_corr, v_id, v_ev, v_rank IN EXECUTE v_sql USING p_run_id LOOP
    v_n := v_n + 1;
    v_at := coalesce(v_seq, v_n);

    -- Position: seq_duplicate / seq_gap, in addition to any lifecycle finding.
    -- The common case first (guarded so that it cannot overflow); the rest
    -- wraps at 2^64 as the Rust arithmetic of a release build does.
    IF v_seq > coalesce(v_last_seq, 9223372036854775807) AND v_seq - 1 = v_last_seq THEN
      v_last_seq := v_seq;
    ELSIF v_seq IS NOT NULL THEN
      IF v_seq = v_last_seq THEN
        seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
        anomaly := 'seq_duplicate';
        detail := format('seq %s is used by more than one event of this run', v_seq);
        RETURN NEXT;
      ELSIF v_seq > (CASE WHEN v_last_seq IS NULL THEN 1
                          WHEN v_last_seq = 9223372036854775807 THEN -9223372036854775808
                          ELSE v_last_seq + 1 END) THEN
        seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
        anomaly := 'seq_gap';
        detail := format('seq jumps from %s to %s: %s position(s) missing before this event',
                         coalesce(v_last_seq, 0), v_seq,
                         ((v_seq::numeric - coalesce(v_last_seq, 0) - 1 + 9223372036854775808)
                          % 18446744073709551616 + 18446744073709551616) % 18446744073709551616
                          - 9223372036854775808);
        RETURN NEXT;
      END IF;
      IF v_last_seq IS NULL OR v_seq > v_last_seq THEN v_last_seq := v_seq; END IF;
    END IF;

    -- Malformed events.
    IF v_ev IS NULL THEN
      seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
      anomaly := 'invalid_event';
      detail := format('"%s" is not a workflow event type; no consumer will accept it', coalesce(v_type, ''));
      RETURN NEXT;
      CONTINUE;
    END IF;
    v_kind := c_kind[v_ev];
    IF v_corr IS NULL THEN
      IF v_kind <> 0 THEN
        seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
        anomaly := 'invalid_event';
        detail := format('%s has no correlation id, so it belongs to no %s', v_type, c_kind_name[v_kind]);
        RETURN NEXT;
        CONTINUE;
      END IF;
    ELSIF v_kind = 0 AND v_ev <> 17 THEN
      seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
      anomaly := 'invalid_event';
      detail := format('%s is a run-level event but carries correlation id "%s"', v_type, v_corr);
      RETURN NEXT;
      CONTINUE;
    ELSIF v_corr = '' OR octet_length(v_corr) > 255 THEN
      seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
      anomaly := 'invalid_event';
      detail := CASE WHEN v_corr = '' THEN 'correlation_id must not be empty'
                     ELSE format('correlation_id is %s bytes long; at most 255 are allowed', octet_length(v_corr)) END;
      RETURN NEXT;
      CONTINUE;
    END IF;

    -- A late run_created is taken as the run's creation.
    IF v_ev = 1 AND v_run_state IS NULL AND v_n > 1 THEN
      v_run_state := 1; v_run_since := v_at; v_run_created := v_at;
      seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
      anomaly := 'run_created_not_first';
      detail := format('run_created is event %s of the run; it must be the first', v_n);
      RETURN NEXT;
      CONTINUE;
    END IF;

    -- The entity's state (0: never created).
    IF v_kind <> 0 THEN
      v_idx := (v_rank - 1) * 3 + v_kind;
      IF v_idx > v_cap THEN
        v_grow := greatest(v_cap, v_idx - v_cap, 1024);
        e_state := e_state || array_fill(0, ARRAY[v_grow]);
        e_since := e_since || array_fill(0::bigint, ARRAY[v_grow]);
        e_created := e_created || array_fill(0::bigint, ARRAY[v_grow]);
        v_cap := v_cap + v_grow;
      END IF;
      v_est := e_state[v_idx];
    END IF;

    -- lifecycle::check. Violations: 1 missing_run_created, 2 duplicate_creation,
    -- 3 missing_creation, 4 event_after_terminal, 5 event_after_run_terminal,
    -- 6 illegal_transition (v_vstate: the state named in the detail).
    v_viol := 0;
    IF v_ev = 1 THEN
      IF v_run_state IS NOT NULL THEN v_viol := 2; END IF;
    ELSIF v_run_state IS NULL THEN
      v_viol := 1;
    ELSIF v_kind = 0 THEN
      IF v_ev = 5 AND v_run_state = 5 THEN
        NULL;                                   -- cancelling a cancelled run is a no-op
      ELSIF v_run_state >= 3 THEN
        v_viol := 4; v_vstate := v_run_state;
      ELSIF NOT (v_ev IN (5, 17) OR (v_ev = 2 AND v_run_state = 1) OR (v_ev IN (3, 4) AND v_run_state = 2)) THEN
        v_viol := 6; v_vstate := v_run_state;
      END IF;
    ELSIF v_ev IN (6, 11, 13, 16) THEN          -- creates the entity
      IF v_est <> 0 THEN
        IF v_ev = 16 OR v_est = 14 THEN v_viol := 6; v_vstate := v_est; ELSE v_viol := 2; END IF;
      ELSIF v_run_state >= 3 THEN
        v_viol := 5;
      END IF;
    ELSIF v_est = 0 THEN
      v_viol := 3;
    ELSIF v_est IN (8, 9, 11, 13, 14) THEN      -- entity terminal
      v_viol := 4; v_vstate := v_est;
    ELSIF v_run_state >= 3 AND v_ev IN (7, 14) THEN
      v_viol := 5;
    ELSIF NOT ((v_ev = 7 AND v_est = 6) OR (v_ev IN (8, 9, 10) AND v_est = 7)
               OR (v_ev = 12 AND v_est = 10) OR (v_ev IN (14, 15) AND v_est = 12)) THEN
      v_viol := 6; v_vstate := v_est;
    END IF;

    IF v_viol <> 0 THEN
      -- Auditor::explain.
      v_what := CASE WHEN v_kind <> 0 THEN format('%s "%s"', c_kind_name[v_kind], v_corr) ELSE 'the run' END;
      seq := v_at; event_id := v_id; event_type := v_type; correlation_id := v_corr;
      CASE v_viol
        WHEN 1 THEN
          anomaly := 'missing_run_created';
          detail := format('%s before any run_created: the run was never created', v_type);
        WHEN 2 THEN
          anomaly := 'duplicate_creation';
          v_pos := CASE WHEN v_kind <> 0 THEN e_created[v_idx] ELSE coalesce(v_run_created, 0) END;
          detail := format('%s was already created at position %s; a replay has no consumer for this '
                           'second %s ("Unconsumed event in event log")', v_what, v_pos, v_type);
        WHEN 3 THEN
          anomaly := 'missing_creation';
          detail := format('%s for %s, which was never created (no %s_created before it)',
                           v_type, v_what, c_kind_name[v_kind]);
        WHEN 4 THEN
          anomaly := 'event_after_terminal';
          v_pos := CASE WHEN v_kind <> 0 THEN e_since[v_idx] ELSE coalesce(v_run_since, 0) END;
          detail := format('%s after %s was already %s at position %s', v_type, v_what, c_label[v_vstate], v_pos);
        WHEN 5 THEN
          anomaly := 'event_after_run_terminal';
          detail := format('%s for %s after the run was %s at position %s: nothing new may be created '
                           'or started on a finished run', v_type, v_what, c_label[v_run_state], coalesce(v_run_since, 0));
        ELSE
          anomaly := 'illegal_transition';
          detail := format('%s is not allowed while %s is %s', v_type, v_what, c_label[v_vstate]);
      END CASE;
      RETURN NEXT;
      CONTINUE;
    END IF;

    -- Accepted: advance as the writer would have.
    IF v_kind = 0 THEN
      v_after := CASE WHEN v_ev <= 5 THEN v_ev ELSE v_run_state END;
      IF v_after IS DISTINCT FROM v_run_state THEN
        v_run_created := coalesce(v_run_created, v_at);
        v_run_state := v_after;
        v_run_since := v_at;
      END IF;
    ELSE
      IF v_est = 0 THEN e_created[v_idx] := v_at; END IF;
      e_state[v_idx] := c_after[v_ev];
      e_since[v_idx] := v_at;
    END IF;
  END LOOP;
END
$fn$;
