//! Protecting existing event tables in place: `attach` / `detach` and the
//! DDL watcher live in `sql/attach.sql` (DDL around one PL/pgSQL body
//! each); the rows are checked by the same trigger as `workflow_ext.events`
//! (`crate::write::trigger`). What attach needs from the rules is here: `run_state`,
//! the state a run's stored events leave it in.

use crate::errors::internal;
use crate::pg::index_scan::texts_where_first_key;
use crate::rules::fold::{run_state_after_events, Fnv};
use crate::rules::lifecycle;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// The state `attach` seeds a run's `workflow_ext.runs` row with: what its
/// stored events leave it in, by the one fold of the rules
/// ([`crate::rules::fold`]).
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn run_state(types: Array<'_, &str>) -> Option<&'static str> {
    run_state_after_events(types.iter()).map(lifecycle::State::as_str)
}

/// One numbering of a log's existing rows, in progress: the runs whose ids
/// have been read and not yet all numbered.
struct Numbering {
    /// Which call of attach this is (`seq_in_run`'s `numbering`): a new one
    /// starts afresh, so nothing of a failed one is reused.
    numbering: i64,
    log: pg_sys::Oid,
    runs: HashMap<Box<str>, RunIds, BuildHasherDefault<Fnv>>,
    /// The rows without a run id, as one more run.
    null_run: Option<RunIds>,
}

/// A run's ids in replay order (bytes, as `COLLATE "C"`; NULL last), and
/// which positions have been handed out.
struct RunIds {
    ids: Vec<Option<String>>,
    taken: Vec<bool>,
    left: usize,
}

thread_local! {
    static NUMBERING: RefCell<Option<Numbering>> = const { RefCell::new(None) };
}

/// The seq attach gives an existing row: its position among its run's rows
/// in replay order (by id, bytes, NULL last), 1-based, which is what
/// `row_number() OVER (PARTITION BY run_id ORDER BY id COLLATE "C")` gives;
/// rows with equal ids get distinct positions, one each call.
///
/// attach calls it once per row from a table rewrite (`ALTER TABLE … ALTER
/// COLUMN seq TYPE bigint USING …`), which writes every row once and
/// rebuilds the indexes in bulk: about five times faster than an `UPDATE`,
/// which writes a second version of every row and an entry in every index
/// (bench/attach_speed.py). A run's ids are read once, straight from
/// `run_index`, an index of the table on `run_id` (attach uses the rewrite
/// only when there is one), and forgotten
/// when its last row is numbered, so memory holds the runs whose rows are
/// interleaved in the table, not the table. `numbering` is new for every
/// attach, so a failed one leaves nothing behind that a later one reads.
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn seq_in_run(
    log: pg_sys::Oid,
    run_index: pg_sys::Oid,
    numbering: i64,
    run_id: Option<&str>,
    id: Option<&str>,
) -> i64 {
    NUMBERING.with(|cell| {
        let mut cell = cell.borrow_mut();
        if !cell
            .as_ref()
            .is_some_and(|n| n.numbering == numbering && n.log == log)
        {
            *cell = Some(Numbering {
                numbering,
                log,
                runs: HashMap::default(),
                null_run: None,
            });
        }
        let n = cell
            .as_mut()
            .unwrap_or_else(|| internal!("numbering vanished"));
        let known = match run_id {
            Some(r) => n.runs.contains_key(r),
            None => n.null_run.is_some(),
        };
        if !known {
            // SAFETY: attach holds the table's lock; `run_index` is an
            // index of it whose first column is run_id (attach.sql checks).
            let mut ids = unsafe { texts_where_first_key(log, run_index, run_id, c"id") }
                .unwrap_or_else(|| internal!("cannot read the ids of run {run_id:?}"));
            // NULL last; bytes order, as COLLATE "C".
            ids.sort_unstable_by(|a, b| match (a, b) {
                (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            let len = ids.len();
            let read = RunIds {
                ids,
                taken: vec![false; len],
                left: len,
            };
            match run_id {
                Some(r) => {
                    n.runs.insert(r.into(), read);
                }
                None => n.null_run = Some(read),
            }
        }
        let run = match run_id {
            Some(r) => n.runs.get_mut(r),
            None => n.null_run.as_mut(),
        }
        .unwrap_or_else(|| internal!("run vanished"));
        let from = run.ids.partition_point(|x| match (x, id) {
            (Some(x), Some(id)) => x.as_bytes() < id.as_bytes(),
            (Some(_), None) => true,
            (None, _) => false,
        });
        let slot = (from..run.ids.len())
            .take_while(|&i| run.ids[i].as_deref() == id)
            .find(|&i| !run.taken[i])
            .unwrap_or_else(|| internal!("row of run {run_id:?} not among its ids"));
        run.taken[slot] = true;
        run.left -= 1;
        if run.left == 0 {
            match run_id {
                Some(r) => {
                    n.runs.remove(r);
                }
                None => n.null_run = None,
            }
        }
        i64::try_from(slot + 1).unwrap_or_else(|_| internal!("seq overflow"))
    })
}

/// Numbers the existing rows (seq NULL) of `log`'s runs `run_ids`, or with
/// `run_ids` NULL the rows without a run id, each run 1..n in replay order
/// (by id, bytes; NULL last), as `seq_in_run` and the blocking attach do.
/// For a concurrent attach, which holds each run's lock
/// (`workflow_ext.adopt_runs`) and cannot rewrite the table under its
/// writers: an UPDATE, as the table's owner
/// ([`crate::pg::owner::as_role`]), that the append-only trigger lets
/// through for this log and this statement only. Returns the rows
/// numbered.
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn number_runs(log: Option<pg_sys::Oid>, run_ids: Option<Vec<Option<String>>>) -> i64 {
    let Some(log) = log else {
        crate::errors::raise!(crate::errors::WfError::NullArgument { arg: "log" })
    };
    let name = crate::pg::owner::relation_name(log);
    let owner = crate::pg::owner::owner_of(log)
        .unwrap_or_else(|| internal!("relation {} vanished", log.to_u32()));
    let of_runs = |alias: &str| match run_ids {
        Some(_) => format!("{alias}run_id::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)"),
        None => format!("{alias}run_id IS NULL"),
    };
    // The outer condition repeats the inner one, so that the rows to
    // update are found through the run_id index, not by a scan of the table.
    let statement = format!(
        "UPDATE {name} t SET seq = o.n \
           FROM (SELECT ctid AS row_id, pg_catalog.row_number() OVER \
                        (PARTITION BY run_id ORDER BY id::pg_catalog.text COLLATE \"C\") AS n \
                   FROM {name} WHERE {} AND seq IS NULL) o \
          WHERE {} AND t.seq IS NULL AND t.ctid OPERATOR(pg_catalog.=) o.row_id",
        of_runs(""),
        of_runs("t.")
    );
    let ids = run_ids.unwrap_or_default();
    crate::features::retention::while_numbering(log, || {
        crate::pg::owner::as_role(owner, || {
            Spi::connect_mut(|c| {
                let done = crate::errors::or_internal!(
                    c.update(&statement, None, &[ids.into()]),
                    "number existing rows"
                );
                i64::try_from(done.len()).unwrap_or(i64::MAX)
            })
        })
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::pg::transaction::in_subtransaction;
    use crate::rules::lifecycle::{CorrelationRule, EventType};
    use crate::testing::{writer_code, Rng};
    use pgrx::pg_sys::panic::CaughtError;
    use pgrx::prelude::*;

    /// The creation index's predicate is SQL literals (schema.sql for the
    /// own log, create_creation_index and duplicate_creations in
    /// attach.sql for attached ones): each must cover exactly the creations
    /// the Rust vocabulary calls unique (EventType::is_unique_creation),
    /// checked by evaluating it on every type, keyed and not.
    #[pg_test]
    fn the_creation_index_predicates_match_the_rust_vocabulary() {
        Spi::run(
            "CREATE TABLE probe_log (id text, run_id text NOT NULL, type text NOT NULL, correlation_id text); \
             SELECT workflow_ext.attach('probe_log'); \
             CREATE TABLE dup_probe (id text, run_id text, type text, correlation_id text)",
        )
        .unwrap();
        for t in EventType::ALL {
            for keyed in [false, true] {
                let want = t.is_unique_creation(keyed);
                let corr = keyed.then_some("c");
                let probe = |predicate_of: &str| -> bool {
                    Spi::get_one_with_args::<bool>(
                        &format!(
                            "SELECT pg_catalog.count(*) = 1 FROM (SELECT $1::text AS type, $2::text AS correlation_id) p \
                              WHERE {}",
                            predicate_of
                        ),
                        &[t.as_str().into(), corr.into()],
                    )
                    .unwrap()
                    .unwrap()
                };
                let index_predicate = |rel: &str| -> String {
                    Spi::get_one_with_args::<String>(
                        "SELECT pg_catalog.pg_get_expr(i.indpred, i.indrelid) \
                           FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                          WHERE i.indrelid = $1::pg_catalog.regclass \
                            AND c.relname = 'workflow_events_entity_creation_unique'",
                        &[rel.into()],
                    )
                    .unwrap()
                    .unwrap()
                    // The own log's type is the enum: compare as text.
                    .replace("::workflow_ext.event_type", "::text")
                    .replace("::event_type", "::text")
                };
                for rel in ["workflow_ext.events", "probe_log"] {
                    let predicate = index_predicate(rel).replace("type =", "type::text =");
                    assert_eq!(
                        probe(&predicate),
                        want,
                        "{rel}'s index on {t} (keyed: {keyed})"
                    );
                }
                // duplicate_creations (what attach refuses) counts the same
                // creations: two rows of the key are one duplicate exactly
                // when the type is a unique creation.
                Spi::run("TRUNCATE dup_probe").unwrap();
                Spi::run_with_args(
                    "INSERT INTO dup_probe VALUES ('e1', 'r', $1, $2), ('e2', 'r', $1, $2)",
                    &[t.as_str().into(), corr.into()],
                )
                .unwrap();
                let duplicates = Spi::get_one::<i64>(
                    "SELECT creations FROM workflow_ext.duplicate_creations('dup_probe')",
                )
                .unwrap()
                .unwrap();
                assert_eq!(
                    duplicates == 1,
                    want,
                    "duplicate_creations on {t} (keyed: {keyed})"
                );
            }
        }
    }

    /// One write path: random sequences (legal and not) fed to append_event
    /// on workflow_ext.events and, verbatim, as plain INSERTs into an
    /// attached DevKit-shaped table get the same verdict, event by event,
    /// and leave the same logs.
    #[pg_test]
    fn an_attached_table_is_judged_like_the_own_log() {
        Spi::run(
            "CREATE TABLE dk_events (id varchar PRIMARY KEY, type varchar NOT NULL, \
             correlation_id varchar, created_at timestamp DEFAULT now() NOT NULL, \
             run_id varchar NOT NULL, payload_cbor bytea, spec_version integer)",
        )
        .unwrap();
        Spi::run("SELECT workflow_ext.attach('dk_events')").unwrap();
        let corrs = ["s1", "s2", "w1", "h1", "a1"];
        let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
        let mut rand = |n| rng.below(n);
        let (mut refused, mut accepted) = (0, 0);
        for run_no in 0..40 {
            let run = format!("one-{run_no}");
            for pos in 1..=50 {
                let t = if pos == 1 && rand(10) > 0 {
                    EventType::RunCreated
                } else {
                    EventType::ALL[rand(EventType::ALL.len())]
                };
                let corr = match (t.correlation_rule(), rand(20)) {
                    (CorrelationRule::Required, 0) => None,
                    (CorrelationRule::Forbidden, 0) => Some("x"),
                    (CorrelationRule::Required, _) => Some(corrs[rand(corrs.len())]),
                    (CorrelationRule::Optional, n) if n < 10 => Some("a1"),
                    _ => None,
                };
                let (run_ref, id) = (run.as_str(), format!("wevt_{run_no:03}_{pos:04}"));
                let own = in_subtransaction(move || {
                    Spi::run_with_args(
                        "SELECT workflow_ext.append_event($1, $2, $3)",
                        &[run_ref.into(), corr.into(), t.as_str().into()],
                    )
                    .unwrap();
                });
                let id_ref = id.as_str();
                let attached =
                    in_subtransaction(move || {
                        Spi::run_with_args(
                        "INSERT INTO dk_events (id, run_id, correlation_id, type, spec_version) \
                         VALUES ($1, $2, $3, $4, 5)",
                        &[id_ref.into(), run_ref.into(), corr.into(), t.as_str().into()],
                    )
                    .unwrap();
                    });
                let verdict =
                    |r: &Result<(), Box<CaughtError>>| r.as_ref().err().map(|e| writer_code(e));
                assert_eq!(
                    verdict(&own),
                    verdict(&attached),
                    "{run} #{pos}: {t} {corr:?}"
                );
                if own.is_ok() {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        let same = Spi::get_one::<bool>(
            "SELECT (SELECT array_agg((run_id, seq, type::text, correlation_id) ORDER BY run_id, seq) \
                       FROM workflow_ext.events WHERE run_id LIKE 'one-%') \
                  = (SELECT array_agg((run_id::text, seq, type::text, correlation_id::text) ORDER BY run_id, seq) \
                       FROM dk_events)",
        );
        assert_eq!(same, Ok(Some(true)), "the two logs differ");
        let clean = Spi::get_one::<i64>("SELECT count(*) FROM workflow_ext.scan('dk_events')");
        assert_eq!(clean, Ok(Some(0)));
        assert!(
            refused > 500 && accepted > 300,
            "{refused} refused, {accepted} accepted"
        );
    }

    /// attach numbers existing rows by a table rewrite (seq_in_run) when the
    /// table has an index on run_id: each run's seqs are 1..n in id order
    /// (bytes; equal ids too, NULL ids last), as the UPDATE it replaces
    /// gave them, on rows of many runs interleaved in random order; the
    /// table's owner, an ordinary role, is lent the schema and the function
    /// for the rewrite only and keeps neither.
    #[pg_test]
    fn attach_numbers_existing_rows_by_a_rewrite_like_row_number() {
        Spi::run(
            "CREATE ROLE wfx_numbering_owner; \
             CREATE TABLE numbered_log (id varchar, type varchar NOT NULL, correlation_id varchar, \
                                        run_id varchar, created_at timestamp DEFAULT now() NOT NULL); \
             CREATE INDEX numbered_log_run ON numbered_log (run_id); \
             ALTER TABLE numbered_log OWNER TO wfx_numbering_owner",
        )
        .unwrap();
        let mut rng = Rng(0x5EC0_0D5E_ED00_0001);
        let mut rows = Vec::new();
        for run in 0..60 {
            let n = 1 + rng.below(40);
            for i in 0..n {
                // ids: mostly unique, some repeated, some NULL, in an order
                // that is not insertion order; one run without a run id.
                let id = match rng.below(20) {
                    0 => None,
                    1 => Some(format!("dup{}", rng.below(3))),
                    _ => Some(format!("e{:04}", rng.below(10_000))),
                };
                let run_id = (run != 0).then(|| format!("run-{run:02}"));
                rows.push((id, run_id, if i == 0 { "run_created" } else { "attr_set" }));
            }
        }
        // Interleave the runs in the heap.
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        for (id, run_id, t) in &rows {
            Spi::run_with_args(
                "INSERT INTO numbered_log (id, run_id, type) VALUES ($1, $2, $3)",
                &[id.as_deref().into(), run_id.as_deref().into(), (*t).into()],
            )
            .unwrap();
        }
        let filenode = || {
            Spi::get_one::<pg_sys::Oid>("SELECT pg_relation_filenode('numbered_log')::oid")
                .unwrap()
                .unwrap()
        };
        let before = filenode();
        let numbered = Spi::get_one::<i64>(
            "SELECT workflow_ext.attach('numbered_log', accept_existing => true)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(numbered, rows.len() as i64);
        // Per run: seqs 1..n, and ordered by seq, the ids never go down
        // (NULL ids last).
        let bad = Spi::get_one::<i64>(
            "SELECT count(*) FROM ( \
               SELECT seq, row_number() OVER w AS n, id::text AS id, lag(id::text) OVER w AS prev, \
                      lag(id IS NULL) OVER w AS prev_null \
                 FROM numbered_log WINDOW w AS (PARTITION BY run_id ORDER BY seq)) x \
              WHERE seq IS DISTINCT FROM n \
                 OR (prev_null AND id IS NOT NULL) \
                 OR (id COLLATE \"C\" < prev COLLATE \"C\")",
        )
        .unwrap()
        .unwrap();
        assert_eq!(bad, 0, "rows out of place");
        // The rewrite path was taken (a rewrite gives the table a new file;
        // an UPDATE would not).
        assert_ne!(filenode(), before, "numbered without a rewrite");
        let kept = Spi::get_one::<bool>(
            "SELECT has_schema_privilege('wfx_numbering_owner', 'workflow_ext', 'USAGE') \
                 OR has_function_privilege('wfx_numbering_owner', \
                        'workflow_ext.seq_in_run(oid, oid, bigint, text, text)', 'EXECUTE')",
        )
        .unwrap()
        .unwrap();
        assert!(!kept, "the owner kept what attach lent it");
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::rules::lifecycle::State;

    #[test]
    fn run_state_follows_the_writer() {
        let cases: &[(&[&str], Option<State>)] = &[
            (&[], None),
            (&["run_started"], None),
            (&["run_created"], Some(State::RunPending)),
            (
                &["run_created", "step_created", "run_started"],
                Some(State::RunRunning),
            ),
            (
                &["run_created", "run_started", "run_completed"],
                Some(State::RunCompleted),
            ),
            // A refused event leaves the state: completed stays completed.
            (
                &["run_created", "run_started", "run_completed", "run_started"],
                Some(State::RunCompleted),
            ),
            (
                &["run_created", "run_cancelled", "run_cancelled", "noop"],
                Some(State::RunCancelled),
            ),
            (
                &["run_created", "attr_set", "bogus", "run_started"],
                Some(State::RunRunning),
            ),
        ];
        for (types, want) in cases {
            let got = run_state_after_events(types.iter().map(|t| Some(*t)));
            assert_eq!(got, *want, "{types:?}");
        }
    }
}
