//! Exactly-once fan-in: the arrival that completes a join's set of distinct
//! members is told so, once (seed 002: a with_items successor dispatched once
//! per concurrently finishing item).
//!
//! The join row is the lock: every arrival upserts it (`ON CONFLICT DO
//! UPDATE` locks the row and returns its latest version), so arrivals at one
//! join are counted one at a time, and arrivals at other joins never wait.
//! A member row makes redelivery idempotent; the count moves only when a new
//! member row was inserted, in the same statement.

use crate::append::internal;
use crate::errors::{OrRaise, WfError, WfResult};
use crate::validate;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::cell::OnceCell;

const TEXT: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID);
const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);

struct Plans {
    lock_join: OwnedPreparedStatement,
    add_member: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: OnceCell<Plans> = const { OnceCell::new() };
}

fn build(c: &SpiClient<'_>) -> Plans {
    let prep = |sql: &str, args: &[PgOid]| {
        c.prepare_mut(sql, args)
            .unwrap_or_else(|e| internal(&format!("cannot prepare join statement: {e}")))
            .keep()
    };
    Plans {
        lock_join: prep(
            "INSERT INTO workflow_ext.joins AS j (run_id, join_key, expected) VALUES ($1, $2, $3) \
             ON CONFLICT (run_id, join_key) DO UPDATE SET expected = j.expected \
             RETURNING expected",
            &[TEXT, TEXT, INT4],
        ),
        add_member: prep(
            "WITH m AS (INSERT INTO workflow_ext.join_members (run_id, join_key, member_key) \
                        VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1) \
             UPDATE workflow_ext.joins j SET arrived = j.arrived + 1, \
                    fired_at = CASE WHEN j.arrived + 1 = j.expected THEN now() ELSE j.fired_at END \
             FROM m WHERE j.run_id = $1 AND j.join_key = $2 \
             RETURNING j.arrived",
            &[TEXT, TEXT, TEXT],
        ),
    }
}

fn arrive(run_id: &str, join_key: &str, member_key: &str, expected: i32) -> WfResult<bool> {
    Spi::connect_mut(|c| {
        PLANS.with(|cell| {
            let plans = cell.get_or_init(|| build(c));
            let join = c
                .update(&plans.lock_join, Some(1), &[run_id.into(), join_key.into(), expected.into()])
                .unwrap_or_else(|e| internal(&format!("lock join: {e}")));
            let recorded: i32 = join.first().get(1).ok().flatten().unwrap_or(expected);
            if recorded != expected {
                return Err(WfError::JoinExpectedMismatch {
                    join_key: join_key.to_string(),
                    expected,
                    recorded,
                });
            }
            let added = c
                .update(&plans.add_member, Some(1), &[run_id.into(), join_key.into(), member_key.into()])
                .unwrap_or_else(|e| internal(&format!("add member: {e}")));
            if added.is_empty() {
                return Ok(false); // a redelivery of a member already counted
            }
            let arrived: i32 = added.first().get(1).ok().flatten().unwrap_or(0);
            if arrived > expected {
                return Err(WfError::JoinAlreadyComplete {
                    join_key: join_key.to_string(),
                    member_key: member_key.to_string(),
                    expected,
                });
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
    let run_id = validate::ident("run_id", run_id).or_raise();
    let join_key = validate::ident("join_key", join_key).or_raise();
    let member_key = validate::ident("member_key", member_key).or_raise();
    let expected = expected.ok_or(WfError::NullArgument { arg: "expected" }).or_raise();
    if expected < 1 {
        WfError::JoinExpectedInvalid { expected }.raise();
    }
    arrive(run_id, join_key, member_key, expected).or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

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
        let fired: Vec<bool> = ["a", "a", "b", "b", "c", "c", "a"].into_iter().map(arrive).collect();
        assert_eq!(fired, [false, false, false, false, true, false, false]);
    }

    #[pg_test(error = "join \"j\" expects 3 members, but this call says 4")]
    fn expected_must_match() {
        arrive("a");
        Spi::run("SELECT workflow_ext.join_arrive('r', 'j', 'b', 4)").unwrap();
    }
}
