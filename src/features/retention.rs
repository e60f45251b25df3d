//! Retention: the one way to remove events. Whole finished runs only, so no
//! run is ever left half-deleted. The append-only trigger lives here too:
//! it refuses every change to the log but the purge's own DELETE.

use crate::errors::{or_internal, or_raise, raise, WfError};
use pgrx::prelude::*;
use std::cell::Cell;
use std::convert::Infallible;

thread_local! {
    /// Set only by `purge_runs` around its DELETE; no SQL can reach it.
    static PURGE_IN_PROGRESS: Cell<bool> = const { Cell::new(false) };
    /// The log whose existing rows a concurrent attach is numbering (its
    /// UPDATE of seq only, `crate::features::attach::number_runs`); no SQL
    /// can reach it.
    static NUMBERING: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// Runs `f` (the numbering UPDATE of `log`'s existing rows) with the
/// append-only trigger letting that log's updates through; resets however
/// `f` ends.
pub(crate) fn while_numbering<R>(log: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NUMBERING.with(|n| n.set(None));
        }
    }
    NUMBERING.with(|n| n.set(Some(log)));
    let _reset = Reset;
    f()
}

/// Resets the purge flag however the purge ends (an ERROR unwinds through
/// Rust frames, dropping this).
struct PurgeGuard;

impl PurgeGuard {
    fn enter() -> Self {
        PURGE_IN_PROGRESS.with(|f| f.set(true));
        PurgeGuard
    }
}

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        PURGE_IN_PROGRESS.with(|f| f.set(false));
    }
}

/// BEFORE UPDATE / DELETE / TRUNCATE (ENABLE ALWAYS), on `workflow_ext.events`
/// (per statement) and on attached tables (UPDATE/DELETE per row, so a
/// migration's clean-up that matches no row passes): the log is append-only
/// for every role; only `purge_runs` deletes, and only from the extension's
/// own log.
#[pg_trigger(sql = false)] // declared in sql/functions.sql
fn events_refuse_change<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Infallible> {
    let op = match trigger.op() {
        Ok(PgTriggerOperation::Delete) if PURGE_IN_PROGRESS.with(Cell::get) => return Ok(None),
        Ok(PgTriggerOperation::Update)
            if NUMBERING.with(Cell::get).is_some_and(|log| {
                // SAFETY: a row trigger's open relation.
                unsafe { (*trigger.trigger_data().tg_relation).rd_id == log }
            }) =>
        {
            return Ok(trigger.new().map(|row| row.into_owned()));
        }
        Ok(PgTriggerOperation::Delete) => "delete from",
        Ok(PgTriggerOperation::Update) => "update",
        Ok(PgTriggerOperation::Truncate) => "truncate",
        _ => "change",
    };
    let table = match (trigger.table_schema(), trigger.table_name()) {
        (Ok(schema), Ok(name)) => format!("{schema}.{name}"),
        _ => "the event log".into(),
    };
    raise!(WfError::AppendOnly { op, table })
}

/// Deletes every run that reached a terminal state more than `older_than`
/// ago, with all its events and joins. Returns the number of runs removed.
/// Runs that are locked by an append right now are skipped (the next purge
/// takes them).
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn purge_runs(older_than: Option<Interval>) -> i64 {
    let Some(older_than) = older_than else {
        raise!(WfError::NullArgument { arg: "older_than" })
    };
    if older_than.micros() < 0 || older_than.days() < 0 || older_than.months() < 0 {
        raise!(WfError::NegativeInterval);
    }
    crate::pg::transaction::refuse_if_read_only(c"purge_runs");
    // It reads which runs are finished from their rows.
    crate::write::run_cache::settle();
    // Until ALTER EXTENSION UPDATE, runs has no log column (see
    // plans::runs_keyed_by_log) and holds only workflow_ext.events's runs.
    let own_runs = if crate::pg::plans::runs_keyed_by_log() {
        "log = 'workflow_ext.events'::regclass AND"
    } else {
        ""
    };
    // The own log distributed by Citus: each node purges its own shards.
    if Spi::connect(crate::pg::citus::own_log_distributed) {
        return or_raise!(Spi::connect(|c| crate::pg::citus::purge_on_every_node(
            c, older_than
        )));
    }
    Spi::connect_mut(|c| {
        // Statement 1 locks the doomed runs; statement 2 (a new snapshot,
        // taken after the locks) sees every event committed to them before
        // the lock, so none is left behind.
        let locked = or_internal!(
            c.update(
                &format!(
                    "SELECT coalesce(array_agg(run_id), '{{}}') FROM ( \
                       SELECT run_id FROM workflow_ext.runs \
                       WHERE {own_runs} finished_at <= now() - $1 \
                       FOR UPDATE SKIP LOCKED) d"
                ),
                None,
                &[older_than.into()],
            ),
            "purge lock"
        );
        // coalesce(…, '{}'): never NULL.
        let ids: Vec<String> =
            or_internal!(locked.first().get(1), "purge runs").unwrap_or_default();
        if ids.is_empty() {
            return 0;
        }
        let _guard = PurgeGuard::enter();
        let deleted = or_internal!(
            c.update(
                &format!(
                    "WITH ev AS (DELETE FROM workflow_ext.events WHERE run_id = ANY($1)), \
                          jm AS (DELETE FROM workflow_ext.join_members WHERE run_id = ANY($1)), \
                          j AS (DELETE FROM workflow_ext.joins WHERE run_id = ANY($1)), \
                          ht AS (DELETE FROM workflow_ext.hook_tokens WHERE run_id = ANY($1)) \
                     DELETE FROM workflow_ext.runs WHERE {own_runs} run_id = ANY($1)"
                ),
                None,
                &[ids.into()],
            ),
            "purge delete"
        );
        deleted.len() as i64
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn purges_whole_finished_runs_only() {
        for (run, finish) in [("done", true), ("live", false)] {
            Spi::run_with_args(
                "SELECT workflow_ext.append_event($1, NULL, 'run_created')",
                &[run.into()],
            )
            .unwrap();
            Spi::run_with_args(
                "SELECT workflow_ext.append_event($1, NULL, 'run_started')",
                &[run.into()],
            )
            .unwrap();
            Spi::run_with_args(
                "SELECT workflow_ext.append_event($1, 's', 'step_created')",
                &[run.into()],
            )
            .unwrap();
            if finish {
                Spi::run_with_args(
                    "SELECT workflow_ext.append_event($1, NULL, 'run_failed')",
                    &[run.into()],
                )
                .unwrap();
            }
        }
        assert_eq!(
            Spi::get_one::<i64>("SELECT workflow_ext.purge_runs('0')"),
            Ok(Some(1))
        );
        let left = Spi::get_one::<String>(
            "SELECT string_agg(DISTINCT run_id, ',') FROM workflow_ext.events",
        );
        assert_eq!(left, Ok(Some("live".to_string())));
        let runs =
            Spi::get_one::<i64>("SELECT count(*) FROM workflow_ext.runs WHERE run_id = 'done'");
        assert_eq!(runs, Ok(Some(0)));
    }
}

/// `purge_runs` on one Citus node (`crate::pg::citus::purge_on_every_node`
/// calls it on each): every shard of the distributed own log this node
/// holds, with its co-located run-row shard, purged as `purge_runs` purges
/// one log (lock the finished runs, then delete their events, joins
/// and rows; their terminal events released their tokens). Returns the runs
/// removed. Internal.
#[pg_extern(sql = false)] // declared in sql/citus.sql
fn purge_local_shards(older_than: Option<Interval>) -> i64 {
    let Some(older_than) = older_than else {
        raise!(WfError::NullArgument { arg: "older_than" })
    };
    crate::pg::transaction::refuse_if_read_only(c"purge_runs");
    crate::write::run_cache::settle();
    Spi::connect_mut(|c| {
        let mut purged = 0i64;
        for crate::pg::citus::LocalShards {
            log: log_shard,
            runs: runs_shard,
            joins: joins_shard,
            join_members: members_shard,
        } in crate::pg::citus::local_shards(c)
        {
            check_for_interrupts!();
            let locked = or_internal!(
                c.update(
                    &format!(
                        "SELECT coalesce(array_agg(run_id), '{{}}') FROM ( \
                           SELECT run_id FROM {runs_shard} \
                            WHERE log = 'workflow_ext.events' AND finished_at <= now() - $1 \
                           FOR UPDATE SKIP LOCKED) d"
                    ),
                    None,
                    &[older_than.into()],
                ),
                "purge lock"
            );
            let ids: Vec<String> =
                or_internal!(locked.first().get(1), "purge runs").unwrap_or_default();
            if ids.is_empty() {
                continue;
            }
            let _guard = PurgeGuard::enter();
            let deleted = or_internal!(
                c.update(
                    &format!(
                        // No hook_tokens: a finished run's terminal event
                        // released its tokens, and that table is distributed
                        // by token here (sql/citus.sql).
                        "WITH ev AS (DELETE FROM {log_shard} WHERE run_id = ANY($1)), \
                              jm AS (DELETE FROM {members_shard} WHERE run_id = ANY($1)), \
                              j AS (DELETE FROM {joins_shard} WHERE run_id = ANY($1)) \
                         DELETE FROM {runs_shard} WHERE log = 'workflow_ext.events' AND run_id = ANY($1)"
                    ),
                    None,
                    &[ids.into()],
                ),
                "purge delete"
            );
            purged = purged.saturating_add(deleted.len() as i64);
        }
        purged
    })
}
