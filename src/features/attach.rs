//! Protecting existing event tables in place: `attach` / `detach` and the
//! DDL watcher live in `sql/attach.sql` (DDL around one PL/pgSQL body
//! each); the rows are checked by the same trigger as `workflow_ext.events`
//! (`crate::write::trigger`). What attach needs from the rules is here: `run_state`,
//! the state a run's stored events leave it in.

use crate::rules::fold::run_state_after_events;
use crate::rules::lifecycle;
use pgrx::prelude::*;

/// The state `attach` seeds a run's `workflow_ext.runs` row with: what its
/// stored events leave it in, by the one fold of the rules
/// ([`crate::rules::fold`]).
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn run_state(types: Array<'_, &str>) -> Option<&'static str> {
    run_state_after_events(types.iter()).map(lifecycle::State::as_str)
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
