//! Exactly-once fan-in: the arrival that completes a join's set of distinct
//! members is told so, once (the failure this was built for: a with_items
//! successor dispatched once per concurrently finishing item).
//!
//! The join row is the lock: every arrival upserts it (`ON CONFLICT DO
//! UPDATE` locks the row and returns its latest version), so arrivals at one
//! join are counted one at a time, and arrivals at other joins never wait.
//! A member row makes redelivery idempotent; the count moves only when a new
//! member row was inserted, in the same statement.

use crate::errors::{internal, or_internal, or_raise, raise, WfError, WfResult};
use crate::pg::plans::{self, INT4, TEXT};
use crate::rules::validate;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::OnceCell;

struct Plans {
    /// The run, share-locked against a concurrent purge; one per shape of
    /// `workflow_ext.runs` (keyed by log from 0.3.0 on), and one for the
    /// own log distributed by Citus (its run rows in
    /// `workflow_ext.distributed_runs`), each prepared when first needed
    /// (the others might not parse).
    lock_run: [OnceCell<OwnedPreparedStatement>; 3],
    lock_join: OwnedPreparedStatement,
    add_member: OwnedPreparedStatement,
    mark_fired: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: OnceCell<Plans> = const { OnceCell::new() };
}

fn build(c: &SpiClient<'_>) -> Plans {
    Plans {
        lock_run: [OnceCell::new(), OnceCell::new(), OnceCell::new()],
        lock_join: plans::keep(
            c,
            "INSERT INTO workflow_ext.joins AS j (run_id, join_key, expected) VALUES ($1, $2, $3) \
             ON CONFLICT (run_id, join_key) DO UPDATE SET expected = j.expected \
             RETURNING expected",
            &[TEXT, TEXT, INT4],
        ),
        add_member: plans::keep(
            c,
            "WITH m AS (INSERT INTO workflow_ext.join_members (run_id, join_key, member_key) \
                        VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1) \
             UPDATE workflow_ext.joins j SET arrived = j.arrived + 1 \
             FROM m WHERE j.run_id = $1 AND j.join_key = $2 \
             RETURNING j.arrived",
            &[TEXT, TEXT, TEXT],
        ),
        // A statement of its own, run by the completing arrival only: Citus
        // plans no now() inside a CASE of a distributed UPDATE.
        mark_fired: plans::keep(
            c,
            "UPDATE workflow_ext.joins SET fired_at = now() WHERE run_id = $1 AND join_key = $2",
            &[TEXT, TEXT],
        ),
    }
}

fn arrive(run_id: &str, join_key: &str, member_key: &str, expected: i32) -> WfResult<bool> {
    Spi::connect_mut(|c| {
        PLANS.with(|cell| {
            let plans = cell.get_or_init(|| build(c));
            // A join belongs to a run of workflow_ext.events and goes with it
            // (purge_runs): no join for a run that does not exist. The share
            // lock keeps a purge from removing the run under this join (the
            // purge skips locked runs; one that went first leaves nothing to
            // lock, and the join is refused).
            // On Citus the joins are co-located with the run rows: these
            // statements go to the run's node.
            let distributed = crate::pg::citus::own_log_distributed(c);
            let keyed = plans::runs_keyed_by_log();
            let shape = if distributed { 2 } else { usize::from(keyed) };
            let lock_run = plans.lock_run[shape].get_or_init(|| {
                let (runs, own) = match shape {
                    2 => (
                        "workflow_ext.distributed_runs",
                        "log OPERATOR(pg_catalog.=) 'workflow_ext.events' AND",
                    ),
                    1 => (
                        "workflow_ext.runs",
                        "log OPERATOR(pg_catalog.=) 'workflow_ext.events'::pg_catalog.regclass AND",
                    ),
                    _ => ("workflow_ext.runs", ""),
                };
                plans::keep(
                    c,
                    &format!(
                        "SELECT FROM {runs} \
                          WHERE {own} run_id OPERATOR(pg_catalog.=) $1 FOR KEY SHARE"
                    ),
                    &[TEXT],
                )
            });
            let run = or_internal!(c.update(lock_run, Some(1), &[run_id.into()]), "lock run");
            if run.is_empty() {
                return Err(WfError::JoinRunNotFound {
                    run_id: run_id.to_string(),
                });
            }
            let join = or_internal!(
                c.update(
                    &plans.lock_join,
                    Some(1),
                    &[run_id.into(), join_key.into(), expected.into()]
                ),
                "lock join"
            );
            let recorded: i32 = or_internal!(join.first().get(1), "join size")
                .unwrap_or_else(|| internal!("join size is NULL"));
            if recorded != expected {
                return Err(WfError::JoinExpectedMismatch {
                    join_key: join_key.to_string(),
                    expected,
                    recorded,
                });
            }
            let added = or_internal!(
                c.update(
                    &plans.add_member,
                    Some(1),
                    &[run_id.into(), join_key.into(), member_key.into()]
                ),
                "add member"
            );
            if added.is_empty() {
                return Ok(false); // a redelivery of a member already counted
            }
            let arrived: i32 = or_internal!(added.first().get(1), "arrivals")
                .unwrap_or_else(|| internal!("arrivals is NULL"));
            if arrived > expected {
                return Err(WfError::JoinAlreadyComplete {
                    join_key: join_key.to_string(),
                    member_key: member_key.to_string(),
                    expected,
                });
            }
            if arrived == expected {
                or_internal!(
                    c.update(&plans.mark_fired, None, &[run_id.into(), join_key.into()]),
                    "mark join fired"
                );
            }
            Ok(arrived == expected)
        })
    })
}

/// Records that `member_key` arrived at join `join_key` of `run_id`, which
/// waits for `expected` distinct members. True for exactly one call: the
/// arrival that completes the set.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn join_arrive(
    run_id: Option<&str>,
    join_key: Option<&str>,
    member_key: Option<&str>,
    expected: Option<i32>,
) -> bool {
    let run_id = or_raise!(validate::ident("run_id", run_id));
    let join_key = or_raise!(validate::ident("join_key", join_key));
    let member_key = or_raise!(validate::ident("member_key", member_key));
    let Some(expected) = expected else {
        raise!(WfError::NullArgument { arg: "expected" })
    };
    crate::pg::transaction::refuse_if_read_only(c"join_arrive");
    if expected < 1 {
        raise!(WfError::JoinExpectedInvalid { expected });
    }
    or_raise!(arrive(run_id, join_key, member_key, expected))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn create_run() {
        Spi::run("SELECT workflow_ext.append_event('r', NULL, 'run_created')").unwrap();
    }

    fn arrive(member: &str) -> bool {
        Spi::get_one_with_args::<bool>(
            "SELECT workflow_ext.join_arrive('r', 'j', $1, 3)",
            &[member.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn fires_once_for_the_completing_member_and_ignores_redelivery() {
        create_run();
        let fired: Vec<bool> = ["a", "a", "b", "b", "c", "c", "a"]
            .into_iter()
            .map(arrive)
            .collect();
        assert_eq!(fired, [false, false, false, false, true, false, false]);
    }

    #[pg_test(error = "member count does not match join \"j\"")]
    fn expected_must_match() {
        create_run();
        arrive("a");
        Spi::run("SELECT workflow_ext.join_arrive('r', 'j', 'b', 4)").unwrap();
    }

    #[pg_test(error = "join refused: run \"r\" has no run_created event")]
    fn a_join_needs_its_run() {
        arrive("a");
    }
}
