//! `append_suspension_event` (the idempotent append of one suspension's
//! creation) and `checked_event_type` (`append_event`'s type argument).
//! Both write `workflow_ext.events` through its trigger, so the rules are
//! the write core's ([`super::core`]).

use crate::errors::{internal, or_internal, or_raise, raise, WfError, WfResult};
use crate::pg::payload::Payload;
use crate::pg::plans::{self, required, EQ, JSONB, TEXT};
use crate::pg::transaction::refuse_if_read_only;
use crate::rules::lifecycle::EventType;
use crate::rules::validate::{self, EventAddress};
use crate::write::creation_probe::{self, Probe};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::OnceCell;

/// Plans of the append functions, which write `workflow_ext.events`.
struct AppendPlans {
    /// `find_creation`, and the insert if nothing was found, in one
    /// statement; one plan per suspension type.
    find_or_insert: [OwnedPreparedStatement; 4],
    /// The insert alone, for a key the creation probe has just found absent
    /// (src/write/creation_probe.rs); one plan per suspension type, none for a
    /// hook, whose stored creation may be the hook_conflict recorded in its
    /// place, which the creation index does not hold (`find_creation_sql`).
    insert: [Option<OwnedPreparedStatement>; 4],
}

thread_local! {
    static APPEND_PLANS: OnceCell<AppendPlans> = const { OnceCell::new() };
}

/// The extension's own log, which the append functions write.
const OWN_LOG: &str = "workflow_ext.events";

/// Which of the per-suspension-type plans serves `event`.
fn suspension_index(event: EventType) -> Option<usize> {
    EventType::SUSPENSIONS.iter().position(|t| *t == event)
}

fn build_append_plans(c: &SpiClient<'_>) -> AppendPlans {
    let creation_types = plans::type_list(EventType::SUSPENSIONS);
    let on_conflict = format!(
        "ON CONFLICT (run_id, correlation_id, type) WHERE type {EQ} ANY ({creation_types}) DO NOTHING"
    );
    AppendPlans {
        find_or_insert: EventType::SUSPENSIONS.map(|t| {
            plans::keep(
                c,
                &format!(
                    "WITH found AS ({}), \
                     ins AS (INSERT INTO {OWN_LOG} (run_id, correlation_id, type, payload) \
                             SELECT $1, $2, '{t}', $3 WHERE NOT EXISTS (SELECT FROM found) \
                             {on_conflict} RETURNING id, seq) \
                     SELECT id, seq, false FROM found UNION ALL SELECT id, seq, true FROM ins",
                    creation_probe::find_creation_sql(OWN_LOG, t)
                ),
                &[TEXT, TEXT, JSONB],
            )
        }),
        insert: EventType::SUSPENSIONS.map(|t| {
            (t != EventType::HookCreated).then(|| {
                plans::keep(
                    c,
                    &format!(
                        "INSERT INTO {OWN_LOG} (run_id, correlation_id, type, payload) \
                         VALUES ($1, $2, '{t}', $3) {on_conflict} RETURNING id, seq"
                    ),
                    &[TEXT, TEXT, JSONB],
                )
            })
        }),
    }
}

fn with_append_plans<R>(
    client: &mut SpiClient<'_>,
    f: impl FnOnce(&mut SpiClient<'_>, &AppendPlans) -> R,
) -> R {
    APPEND_PLANS.with(|cell| {
        let plans = cell.get_or_init(|| build_append_plans(client));
        f(client, plans)
    })
}

/// Arguments shared by both append functions, validated.
fn checked_args<'a>(
    run_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    type_name: Option<&'a str>,
    payload: Option<Payload>,
) -> WfResult<EventAddress<'a>> {
    let addr = validate::address(run_id, correlation_id, type_name)?;
    if let Some(p) = payload {
        p.check()?;
    }
    Ok(addr)
}

/// Appends the creation event `type` for (`run_id`, `correlation_id`) unless
/// it exists; either way returns the stored event. Any number of racing
/// callers: one row, one `inserted = true`, the same `event_id` for all.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn append_suspension_event(
    run_id: Option<&str>,
    correlation_id: Option<&str>,
    r#type: Option<&str>,
    payload: default!(Option<Payload>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(event_id, String),
        name!(seq, i64),
        name!(inserted, bool),
    ),
> {
    let addr = or_raise!(checked_args(run_id, correlation_id, r#type, payload));
    let Some(plan) = suspension_index(addr.event) else {
        raise!(WfError::NotSuspension { event: addr.event })
    };
    refuse_if_read_only(c"append_suspension_event");
    // A creation already stored (a redelivery): one index probe, no
    // statement (src/write/creation_probe.rs).
    // SAFETY: in the function's transaction; `addr.event` is a suspension
    // type.
    let probed =
        unsafe { crate::write::creation_probe::find(addr.run_id, addr.correlation_id, addr.event) };
    let absent = match probed {
        Probe::Found(id, seq) => return TableIterator::once((id, seq, false)),
        // A distributed log: the INSERT alone is one statement on the run's
        // node, where the lookup-and-insert statement is several (Citus
        // plans its WITH through intermediate results); a redelivery it
        // skips is read back below.
        Probe::Absent | Probe::InShards => true,
        Probe::NotAsked => false,
    };
    let row = Spi::connect_mut(|client| {
        with_append_plans(client, |c, plans| {
            // The probe read the index and found nothing: the INSERT alone,
            // where the type has one (`AppendPlans::insert`).
            let alone = plans.insert[plan].as_ref().filter(|_| absent);
            let args = [
                addr.run_id.into(),
                addr.correlation_id.into(),
                payload.into(),
            ];
            // Otherwise one statement that returns a committed creation as
            // it is (the log is append-only, so a duplicate takes no lock at
            // all) or inserts the row. Either way the row passes the trigger.
            let (statement, what) = match alone {
                Some(insert) => (insert, "insert"),
                None => (&plans.find_or_insert[plan], "append"),
            };
            let rows = or_internal!(c.update(statement, Some(1), &args), "{what}");
            if !rows.is_empty() {
                let row = rows.first();
                return (
                    required(&row, 1, "event id"),
                    required(&row, 2, "event seq"),
                    // The INSERT alone returns only the row it inserted.
                    alone.is_some() || required(&row, 3, "inserted"),
                );
            }
            // Skipped on conflict: the winner has committed (READ COMMITTED
            // waited for it), so this new snapshot sees its row.
            let (id, seq) = creation_probe::stored_creation(c, &addr)
                .unwrap_or_else(|| internal!("conflicting creation event is not visible"));
            (id, seq, false)
        })
    });
    TableIterator::once(row)
}

/// `type` text → the enum label, with this extension's errors (22004 for
/// NULL, 22023 naming an unknown type) instead of the enum input's 22P02.
/// Used by `append_event` (sql/functions.sql), whose body is one INSERT:
/// every other rule is the trigger's.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn checked_event_type(r#type: Option<&str>) -> &'static str {
    or_raise!(validate::event_type(r#type)).as_str()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::rules::lifecycle::EventType;
    use pgrx::prelude::*;

    /// The SQL enum `workflow_ext.event_type` (sql/schema.sql, which cannot
    /// ask Rust) holds exactly the Rust vocabulary, in its order.
    #[pg_test]
    fn the_sql_event_type_enum_is_the_rust_vocabulary() {
        let labels = Spi::get_one::<Vec<String>>(
            "SELECT pg_catalog.array_agg(e::text ORDER BY e) \
               FROM pg_catalog.unnest(pg_catalog.enum_range(NULL::workflow_ext.event_type)) e",
        )
        .unwrap()
        .unwrap();
        let rust: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(labels, rust);
    }

    fn suspend(run: &str, corr: Option<&str>, t: &str) -> (String, i64, bool) {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event($1, $2, $3)",
                    None,
                    &[run.into(), corr.into(), t.into()],
                )?
                .first();
            Ok::<_, pgrx::spi::SpiError>((row.get(1)?.unwrap(), row.get(2)?.unwrap(), row.get(3)?.unwrap()))
        })
        .unwrap()
    }

    fn append(run: &str, corr: Option<&str>, t: &str) -> i64 {
        Spi::get_one_with_args::<i64>(
            "SELECT seq FROM workflow_ext.append_event($1, $2, $3)",
            &[run.into(), corr.into(), t.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn suspension_appends_once_and_returns_the_stored_event() {
        let first = suspend("r", None, "run_created");
        assert_eq!((first.1, first.2), (1, true));
        let again = suspend("r", None, "run_created");
        assert_eq!(again, (first.0.clone(), 1, false));
        let step = suspend("r", Some("step_1"), "step_created");
        assert_eq!((step.1, step.2), (2, true));
        assert_eq!(
            suspend("r", Some("step_1"), "step_created"),
            (step.0, 2, false)
        );
        let rows =
            Spi::get_one::<i64>("SELECT count(*) FROM workflow_ext.events WHERE run_id = 'r'");
        assert_eq!(rows, Ok(Some(2)));
    }

    #[pg_test]
    fn seq_is_dense_across_both_functions_and_raw_inserts() {
        suspend("r", None, "run_created");
        append("r", None, "run_started");
        suspend("r", Some("s"), "step_created");
        Spi::run("INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('r', 's', 'step_started')")
            .unwrap();
        assert_eq!(append("r", Some("s"), "step_completed"), 5);
        let dense = Spi::get_one::<bool>(
            "SELECT array_agg(seq ORDER BY seq) = ARRAY[1,2,3,4,5]::bigint[] FROM workflow_ext.events WHERE run_id = 'r'",
        );
        assert_eq!(dense, Ok(Some(true)));
    }

    #[pg_test(error = "step_created refused: run \"nope\" has no run_created event")]
    fn creation_without_run_is_refused() {
        suspend("nope", Some("s"), "step_created");
    }

    #[pg_test(
        error = "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique\""
    )]
    fn strict_duplicate_creation_names_the_index() {
        suspend("r", None, "run_created");
        append("r", Some("s"), "step_created");
        append("r", Some("s"), "step_created");
    }

    #[pg_test(error = "step_started refused: step \"s\" of run \"r\" is already completed")]
    fn late_start_after_completion_is_refused() {
        suspend("r", None, "run_created");
        append("r", None, "run_started");
        for t in [
            "step_created",
            "step_started",
            "step_completed",
            "step_started",
        ] {
            append("r", Some("s"), t);
        }
    }

    #[pg_test(error = "step_started refused: step \"s\" of run \"r\" is already completed")]
    fn raw_insert_is_checked_like_append_event() {
        suspend("r", None, "run_created");
        for t in [
            "step_created",
            "step_started",
            "step_completed",
            "step_started",
        ] {
            Spi::run_with_args(
                "INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('r', 's', $1::workflow_ext.event_type)",
                &[t.into()],
            )
            .unwrap();
        }
    }

    #[pg_test(error = "run_id must not be null")]
    fn null_run_id_is_refused() {
        suspend_null_run();
    }

    fn suspend_null_run() {
        Spi::run("SELECT workflow_ext.append_suspension_event(NULL, 's', 'step_created')").unwrap();
    }

    #[pg_test(error = "cannot update workflow_ext.events")]
    fn update_is_refused() {
        suspend("r", None, "run_created");
        Spi::run("UPDATE workflow_ext.events SET payload = '{}'").unwrap();
    }

    #[pg_test(error = "cannot delete from workflow_ext.events")]
    fn delete_is_refused_under_replica_role() {
        suspend("r", None, "run_created");
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run("DELETE FROM workflow_ext.events").unwrap();
    }
}
