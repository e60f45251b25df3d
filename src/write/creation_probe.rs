//! `append_suspension_event`'s answer for a creation that already exists,
//! looked up straight in `workflow_ext.events`' creation index from Rust.
//!
//! A redelivered suspension (a worker retrying, a replayed workflow) asks
//! for a creation that is there. Through SPI the answer cost a whole
//! `WITH found … INSERT … ON CONFLICT` statement: parsing nothing, but
//! starting an executor that opens the table for insert with every index
//! and its arbiter, to insert no row. Here it is one index probe, and a key
//! it finds absent is inserted by the INSERT alone, without that lookup.
//!
//! The probe answers [`Probe::Found`] or [`Probe::Absent`] only when it
//! read the index; whenever it cannot read it (no direct read allowed, the
//! index not as expected) it says [`Probe::NotAsked`] and the caller takes
//! the SQL path that looks the creation up itself: the statements at the
//! end of this file, which the trigger (on any log) and the batch share.

use crate::errors::or_internal;
use crate::pg::index_scan::{
    begin_index_scan, column, is_null_key, own_log_and_index, text_eq_key,
};
use crate::pg::plans::{self, required, EQ, TEXT};
use crate::rules::lifecycle::EventType;
use crate::rules::validate::EventAddress;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::FromDatum;
use std::cell::OnceCell;
use std::ffi::CString;

/// What the probe learned.
pub enum Probe {
    /// The stored creation: its id and seq.
    Found(String, i64),
    /// The index, read in the statement's snapshot, holds no such creation.
    Absent,
    /// The probe may not or cannot read the index.
    NotAsked,
    /// Citus distributes the log: its rows are in shards, not in the heap
    /// here. The caller inserts first (one statement, routed to the run's
    /// node) and reads a skipped creation back.
    InShards,
}

/// The stored creation `event` of (`run_id`, `correlation_id`) in the
/// statement's snapshot.
///
/// Allowed exactly when the SQL statement it replaces would run with the
/// same result: the user holds SELECT and INSERT on the whole table (the
/// statement reads and inserts) and row security does not apply.
///
/// # Safety
/// Inside a transaction; `event` is a creation type in the index's
/// predicate (a suspension type).
pub unsafe fn find(run_id: &str, correlation_id: Option<&str>, event: EventType) -> Probe {
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return Probe::NotAsked;
        }
        let Some((rel_oid, idx_oid)) = own_log_and_index(
            c"workflow_events_entity_creation_unique",
            &[pg_sys::ACL_SELECT, pg_sys::ACL_INSERT],
        ) else {
            return Probe::NotAsked;
        };
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(rel_oid, lock);
        // Distributed by Citus, the log's rows are in its shards; the heap
        // here holds none, or those Citus left behind when it distributed
        // the log (a purged run's among them).
        if crate::pg::citus::holds(heap) {
            pg_sys::table_close(heap, lock);
            return Probe::InShards;
        }
        let index = pg_sys::index_open(idx_oid, lock);
        let found = probe(heap, index, run_id, correlation_id, event);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        match found {
            Some(Some((id, seq))) => Probe::Found(id, seq),
            Some(None) => Probe::Absent,
            None => Probe::NotAsked,
        }
    }
}

/// Some(the creation found, if any) when the index was read; None when it
/// could not be.
unsafe fn probe(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    run_id: &str,
    correlation_id: Option<&str>,
    event: EventType,
) -> Option<Option<(String, i64)>> {
    unsafe {
        let id_col = column(heap, c"id")?;
        let run_col = column(heap, c"run_id")?;
        let corr_col = column(heap, c"correlation_id")?;
        let type_col = column(heap, c"type")?;
        let seq_col = column(heap, c"seq")?;
        // The index must be usable and keyed (run_id, correlation_id, type).
        let ix = (*index).rd_index;
        let keys = std::slice::from_raw_parts(
            (*ix).indkey.values.as_ptr(),
            usize::try_from((*ix).indnkeyatts).ok()?,
        );
        let expected = [run_col, corr_col, type_col].map(|c| i16::try_from(c + 1).ok());
        if !(*ix).indisvalid
            || keys.len() != 3
            || keys.iter().zip(expected).any(|(k, e)| Some(*k) != e)
        {
            return None;
        }
        // The label's OID in the column's enum.
        let type_oid = pg_sys::get_atttype((*heap).rd_id, i16::try_from(type_col + 1).ok()?);
        let label = CString::new(event.as_str()).ok()?;
        let label_oid = pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::ENUMTYPOIDNAME as i32,
            pg_sys::Anum_pg_enum_oid as pg_sys::AttrNumber,
            pg_sys::Datum::from(type_oid),
            pg_sys::Datum::from(label.as_ptr()),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        );
        if label_oid == pg_sys::InvalidOid {
            return None;
        }
        let mut keys: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        text_eq_key(&mut keys[0], index, 1, pgrx::IntoDatum::into_datum(run_id)?);
        match correlation_id {
            Some(corr) => text_eq_key(&mut keys[1], index, 2, pgrx::IntoDatum::into_datum(corr)?),
            // run_created: the NULL correlation id (the index is NULLS NOT
            // DISTINCT, so its NULLs are keys like any other).
            None => is_null_key(&mut keys[1], 2),
        }
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[2],
            0,
            3,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::Oid::from(pg_sys::F_ENUM_EQ),
            pg_sys::Datum::from(label_oid),
        );
        let scan = begin_index_scan(heap, index, 3);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 3, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let mut found = Some(None);
        if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getallattrs(slot);
            let natts = usize::try_from((*slot).tts_nvalid).unwrap_or(0);
            let values = std::slice::from_raw_parts((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
            // A row we cannot read (both columns are NOT NULL in our log):
            // say nothing rather than "absent".
            found = None;
            if id_col < natts && seq_col < natts && !nulls[id_col] && !nulls[seq_col] {
                let id = String::from_datum(values[id_col], false);
                found = id.map(|id| Some((id, values[seq_col].value() as i64)));
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        found
    }
}

// -- By statement ---------------------------------------------------------------

/// The extension's own log.
const OWN_LOG: &str = "workflow_ext.events";

thread_local! {
    /// `find_creation_sql` on the own log, one plan per suspension type,
    /// prepared on first use and kept.
    static OWN_LOG_FIND: OnceCell<[OwnedPreparedStatement; 4]> = const { OnceCell::new() };
}

/// The stored creation of unique type `t` in `log`; the type is a literal so
/// the planner can prove the partial index's predicate even for a generic
/// plan. A hook's creation is its hook_created, or the hook_conflict
/// recorded for it when its token was taken (an entity has at most one of
/// the two), so a loser's redelivered hook_created gets its stored event
/// back too.
pub(crate) fn find_creation_sql(log: &str, t: EventType) -> String {
    let corr = if t == EventType::RunCreated {
        "$2::pg_catalog.text IS NULL AND correlation_id IS NULL".to_string()
    } else {
        format!("correlation_id {EQ} $2")
    };
    let types = if t == EventType::HookCreated {
        format!(
            "type {EQ} ANY ({})",
            plans::type_list([t, EventType::HookConflict])
        )
    } else {
        format!("type {EQ} '{t}'")
    };
    format!(
        "SELECT id::pg_catalog.text, seq FROM {log} WHERE run_id {EQ} $1 AND {corr} AND {types}"
    )
}

/// (id, seq) of the first row of a statement returning them, if any.
fn id_and_seq(rows: SpiTupleTable<'_>) -> Option<(String, i64)> {
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    Some((
        required(&row, 1, "event id"),
        required(&row, 2, "event seq"),
    ))
}

/// The stored creation an address names, through `plan` (one of the
/// `find_creation` plans, for the address's type).
pub(crate) fn creation(
    client: &mut SpiClient<'_>,
    plan: &OwnedPreparedStatement,
    addr: &EventAddress<'_>,
) -> Option<(String, i64)> {
    id_and_seq(or_internal!(
        client.update(
            plan,
            Some(1),
            &[addr.run_id.into(), addr.correlation_id.into()]
        ),
        "find creation"
    ))
}

/// The stored creation of a suspension event in `workflow_ext.events`, if
/// any (a hook's hook_conflict counts: see [`find_creation_sql`]).
pub(crate) fn stored_creation(
    client: &mut SpiClient<'_>,
    addr: &EventAddress<'_>,
) -> Option<(String, i64)> {
    let plan = EventType::SUSPENSIONS
        .iter()
        .position(|t| *t == addr.event)?;
    OWN_LOG_FIND.with(|cell| {
        let plans = cell.get_or_init(|| {
            EventType::SUSPENSIONS
                .map(|t| plans::keep(client, &find_creation_sql(OWN_LOG, t), &[TEXT, TEXT]))
        });
        creation(client, &plans[plan], addr)
    })
}
