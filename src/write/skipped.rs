//! The rows an `INSERT … ON CONFLICT` skips after the trigger numbered
//! them.
//!
//! PostgreSQL fires a BEFORE ROW trigger before it checks the statement's
//! arbiter indexes, so a row the trigger accepted, and gave the run's next
//! seq, can still be skipped: by `DO NOTHING`, or by `DO UPDATE … WHERE`
//! that does not update. Left alone, the run would keep a gap at that seq
//! and the state the skipped event would have given it.
//!
//! Two arbiters can never skip an accepted row: the creation index (the
//! trigger accepts a creation only when the entity has none, and hands a
//! duplicate on without taking a seq, [`super::core`]) and any unique index
//! over both `run_id` and `seq` (nobody else numbers the locked run). For
//! any other arbiter (the `id` key, an index of the owner's, or every
//! unique index, as `ON CONFLICT DO NOTHING` without a target checks), the
//! trigger notes the row it numbered, and when the statement ends
//! ([`crate::pg::row_origin`]) the noted rows are looked up in the log, in
//! one statement per log:
//! - stored: nothing to do;
//! - skipped, and the last seq the run holds in this transaction: the run
//!   gets its seq and its state back ([`run_cache`]), as if the row had
//!   never come;
//! - skipped behind a later row of its run, or the row that created the
//!   run: the seq cannot be given back, and the statement fails
//!   ([`WfError::NumberedRowSkipped`]), which stores nothing.

use crate::errors::{internal, or_internal, raise, WfError};
use crate::pg::log_shape::Columns;
use crate::pg::owner::{as_role, relation_name};
use crate::pg::row_origin::{self, Arbiters};
use crate::rules::lifecycle::{EventType, State};
use crate::write::core::{kept_plans, LogPlans};
use crate::write::run_cache::{self, Held};
use pgrx::prelude::*;
use std::cell::RefCell;

/// A row an `INSERT … ON CONFLICT` may skip, numbered by the trigger.
struct Numbered {
    /// The executor depth of the statement's rows.
    depth: u32,
    log: pg_sys::Oid,
    run_id: String,
    seq: i64,
    /// The run's state before the row; None: the row created the run.
    before: Option<State>,
    /// The role the trigger ran as, which reads the log.
    writer: pg_sys::Oid,
}

thread_local! {
    static NUMBERED: RefCell<Vec<Numbered>> = const { RefCell::new(Vec::new()) };
}

/// Whether an `INSERT … ON CONFLICT` with `arbiters` into the log `rel`
/// (columns `cols`) may skip a row the trigger accepts: whether it checks an
/// index but the creation index (found by its name, a shard's copy with the
/// shard's id appended; what it is made of the DDL watcher checks on every
/// change of an attached log, and only the extension's owner can change the
/// own log's) and the unique indexes over `run_id` and `seq`.
///
/// # Safety
/// `rel` is the trigger's open relation.
pub(crate) unsafe fn may_skip(
    rel: pg_sys::Relation,
    cols: &Columns,
    plans: &LogPlans,
    arbiters: &Arbiters,
) -> bool {
    let creation = match &plans.shard {
        Some(shard) => format!("{}_{}", EventType::CREATION_INDEX, shard.shard_id),
        None => EventType::CREATION_INDEX.to_owned(),
    };
    let (Some(run_id), Some(seq)) = (cols.attno("run_id"), cols.attno("seq")) else {
        return true;
    };
    // SAFETY: the caller's relation.
    unsafe { row_origin::any_arbiter_but(rel, arbiters, &creation, &[run_id, seq]) }
}

/// Notes a row the trigger numbered `seq` that the `INSERT … ON CONFLICT`
/// at executor depth `depth` may skip; `before`: the run's state before it
/// (None: it created the run).
pub(crate) fn numbered(
    depth: u32,
    log: pg_sys::Oid,
    run_id: &str,
    seq: i64,
    before: Option<State>,
) {
    // SAFETY: a read of the backend's current user id (the trigger's).
    let writer = unsafe { pg_sys::GetUserId() };
    NUMBERED.with(|n| {
        n.borrow_mut().push(Numbered {
            depth,
            log,
            run_id: run_id.to_owned(),
            seq,
            before,
            writer,
        });
    });
}

/// The rows noted at `depth` and deeper, taken out.
fn take_from(depth: u32) -> Vec<Numbered> {
    NUMBERED.with(|n| {
        let mut n = n.borrow_mut();
        let (taken, kept) = std::mem::take(&mut *n)
            .into_iter()
            .partition(|r| r.depth >= depth);
        *n = kept;
        taken
    })
}

/// The `INSERT … ON CONFLICT` whose rows fired at `depth` failed: what it
/// numbered went with it (no PostgreSQL call: this runs while its error
/// unwinds).
pub(crate) fn statement_failed(depth: u32) {
    take_from(depth);
}

/// The transaction ended: nothing it numbered is pending.
pub(crate) fn transaction_ended() {
    NUMBERED.with(|n| n.borrow_mut().clear());
}

/// The `INSERT … ON CONFLICT` whose rows fired at `depth` ended: each row
/// it numbered is stored, or given back its seq, or the statement fails
/// (module doc). Newest first: a run's later skipped row gives back its seq
/// before an earlier one can.
#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn statement_ended(depth: u32) {
    let rows: Vec<Numbered> = take_from(depth)
        .into_iter()
        .filter(|r| r.depth == depth)
        .collect();
    let missing = missing(&rows);
    for row in rows
        .iter()
        .zip(missing)
        .rev()
        .filter_map(|(r, m)| m.then_some(r))
    {
        // As many as the statement's rows: a cancel is answered here too.
        pgrx::check_for_interrupts!();
        let held = run_cache::held(row.log, &row.run_id);
        match (row.before, held) {
            (Some(state), Some(held)) if held.last_seq == row.seq => run_cache::advance(
                row.log,
                &row.run_id,
                Held {
                    state,
                    last_seq: row.seq - 1,
                },
            ),
            _ => raise!(WfError::NumberedRowSkipped {
                log: relation_name(row.log),
                run_id: row.run_id.clone(),
                seq: row.seq,
                created: row.before.is_none(),
            }),
        }
    }
}

/// Which of `rows` the log has no row at (run, seq) for, as this
/// transaction sees it now (the statement's own rows included: SPI's
/// command counter increment): one statement per log, however many rows.
fn missing(rows: &[Numbered]) -> Vec<bool> {
    let mut missing = vec![false; rows.len()];
    let mut logs: Vec<(pg_sys::Oid, pg_sys::Oid)> = Vec::new();
    for r in rows {
        pgrx::check_for_interrupts!();
        if !logs.contains(&(r.log, r.writer)) {
            logs.push((r.log, r.writer));
        }
    }
    for (log, writer) in logs {
        let at: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].log == log && rows[i].writer == writer)
            .collect();
        let run_ids: Vec<&str> = at.iter().map(|&i| rows[i].run_id.as_str()).collect();
        let seqs: Vec<i64> = at.iter().map(|&i| rows[i].seq).collect();
        let plans =
            kept_plans(log).unwrap_or_else(|| internal!("no plans for log {}", log.to_u32()));
        let gone: Vec<i64> = as_role(writer, || {
            Spi::connect_mut(|client| {
                or_internal!(
                    client.update(&plans.missing_at, None, &[run_ids.into(), seqs.into()]),
                    "stored rows"
                )
                .map(|row| or_internal!(row.get::<i64>(1), "stored row").unwrap_or(0))
                .collect()
            })
        });
        for n in gone {
            pgrx::check_for_interrupts!();
            let slot = usize::try_from(n)
                .ok()
                .and_then(|n| at.get(n.checked_sub(1)?))
                .unwrap_or_else(|| internal!("no numbered row {n}"));
            missing[*slot] = true;
        }
    }
    missing
}
