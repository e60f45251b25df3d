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
//! ([`crate::pg::row_origin`]) each noted row is looked up in the log:
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
use crate::pg::row_origin::Arbiters;
use crate::rules::lifecycle::{EventType, State};
use crate::write::core::{kept_plans, LogPlans};
use crate::write::run_cache::{self, Held};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CString;

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
/// (columns `cols`) may skip a row the trigger accepts.
///
/// # Safety
/// `rel` is the trigger's open relation.
pub(crate) unsafe fn may_skip(
    rel: pg_sys::Relation,
    cols: &Columns,
    plans: &LogPlans,
    arbiters: &Arbiters,
) -> bool {
    unsafe {
        let indexes = match arbiters {
            Arbiters::These(named) => named.clone(),
            Arbiters::All => {
                let list = pg_sys::RelationGetIndexList(rel);
                let all = if list.is_null() {
                    Vec::new()
                } else {
                    let len = usize::try_from((*list).length).unwrap_or(0);
                    (0..len)
                        .map(|i| (*(*list).elements.add(i)).oid_value)
                        .collect()
                };
                pg_sys::list_free(list);
                all
            }
        };
        let creation = creation_index(rel, plans);
        indexes
            .into_iter()
            .any(|index| Some(index) != creation && !cannot_skip(index, cols, arbiters))
    }
}

/// Whether `index` cannot skip a row the trigger accepted: it is unique
/// over both `run_id` and `seq` among its key columns, or (every unique
/// index being an arbiter) it is not an arbiter.
unsafe fn cannot_skip(index: pg_sys::Oid, cols: &Columns, arbiters: &Arbiters) -> bool {
    let (Some(run_id), Some(seq)) = (cols.attno("run_id"), cols.attno("seq")) else {
        return false;
    };
    // SAFETY: a relcache entry, released before return.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(index);
        if rel.is_null() {
            return false;
        }
        let form = (*rel).rd_index;
        let answer = if form.is_null() {
            false
        } else if matches!(arbiters, Arbiters::All)
            && !(*form).indisunique
            && !(*form).indisexclusion
        {
            // An index DO NOTHING without a target does not check.
            true
        } else {
            let keys = usize::try_from((*form).indnkeyatts).unwrap_or(0);
            let key = (*form).indkey.values.as_slice(keys);
            (*form).indisunique && key.contains(&run_id) && key.contains(&seq)
        };
        pg_sys::RelationClose(rel);
        answer
    }
}

/// The log's creation index, as the trigger relies on it: by its name in
/// the log's schema (a shard's copy with the shard's id appended), on this
/// log, valid. What it is made of the DDL watcher checks on every change of
/// an attached log, and only the extension's owner can change the own one.
unsafe fn creation_index(rel: pg_sys::Relation, plans: &LogPlans) -> Option<pg_sys::Oid> {
    let name = match &plans.shard {
        Some(shard) => format!("{}_{}", EventType::CREATION_INDEX, shard.shard_id),
        None => EventType::CREATION_INDEX.to_owned(),
    };
    let name = CString::new(name).ok()?;
    // SAFETY: syscache lookups by name and OID.
    unsafe {
        let index = pg_sys::get_relname_relid(name.as_ptr(), (*(*rel).rd_rel).relnamespace);
        (index != pg_sys::InvalidOid
            && pg_sys::IndexGetRelation(index, true) == (*rel).rd_id
            && pg_sys::get_index_isvalid(index))
        .then_some(index)
    }
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
    for row in rows.iter().rev() {
        if stored(row) {
            continue;
        }
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

/// Whether the log has the row's run at the row's seq, as this transaction
/// sees it now (its statement's own rows included: SPI's command counter
/// increment).
fn stored(row: &Numbered) -> bool {
    let plans =
        kept_plans(row.log).unwrap_or_else(|| internal!("no plans for log {}", row.log.to_u32()));
    as_role(row.writer, || {
        Spi::connect_mut(|client| {
            !or_internal!(
                client.update(
                    &plans.stored_at,
                    Some(1),
                    &[row.run_id.as_str().into(), row.seq.into()]
                ),
                "stored row"
            )
            .is_empty()
        })
    })
}
