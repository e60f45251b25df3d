//! Index scans driven from Rust: the pieces `log_scan` (replay's read of
//! the own log) and `creation_probe` (append's duplicate check) share.

use pgrx::prelude::*;
use pgrx::FromDatum;
use std::ffi::CStr;

/// The OIDs of `workflow_ext.events` and of its index `index`, when the
/// current user may read the table directly as SQL would let them: every
/// privilege of `needs` on the whole table (column grants alone go through
/// SQL) and no row security. None otherwise.
///
/// # Safety
/// Inside a transaction.
pub(crate) unsafe fn own_log_and_index(
    index: &CStr,
    needs: &[u32],
) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), true);
        let rel_oid = pg_sys::get_relname_relid(c"events".as_ptr(), ns);
        let idx_oid = pg_sys::get_relname_relid(index.as_ptr(), ns);
        if rel_oid == pg_sys::InvalidOid || idx_oid == pg_sys::InvalidOid {
            return None;
        }
        let user = pg_sys::GetUserId();
        let granted = needs.iter().all(|mode| {
            pg_sys::pg_class_aclcheck(rel_oid, user, *mode as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
        });
        let no_rls = pg_sys::check_enable_rls(rel_oid, pg_sys::InvalidOid, true)
            == pg_sys::CheckEnableRlsResult::RLS_NONE as i32;
        (granted && no_rls).then_some((rel_oid, idx_oid))
    }
}

/// `index_beginscan` of `index` on `heap` with `nkeys` keys, in the active
/// snapshot (18 added an instrumentation argument).
///
/// # Safety
/// Both relations open, a snapshot active.
pub(crate) unsafe fn begin_index_scan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    unsafe { begin_index_scan_in(heap, index, pg_sys::GetActiveSnapshot(), nkeys) }
}

/// `index_beginscan` in `snapshot`.
///
/// # Safety
/// Both relations open, `snapshot` valid for the scan.
unsafe fn begin_index_scan_in(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    unsafe {
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
        scan
    }
}

/// The newest row of the own log `heap` whose keys in `index` (a btree on
/// text, text, then an order) start with (`first`, `second`), read
/// backwards, whose column `column` (an enum or text type, printed by its
/// built-in output function) satisfies `pick`: that column's text. What
/// `SELECT column … WHERE a = $1 AND b = $2 AND pick(column) ORDER BY c
/// DESC LIMIT 1` returns in a fresh snapshot after a command counter
/// increment, without an executor: the rows are read as this transaction
/// sees the table now (SnapshotSelf: every committed row, and every row of
/// its own, including those of its current command, as a COPY's earlier
/// rows).
///
/// Only for the extension's own log and index (`own_log_and_index`), whose
/// types and operator classes are the extension's. None when it cannot be
/// read that way.
///
/// # Safety
/// Inside a transaction; `heap` and `index` from `own_log_and_index`.
pub(crate) unsafe fn newest_in_own_log(
    heap: pg_sys::Oid,
    index: pg_sys::Oid,
    first: &str,
    second: &str,
    column: &CStr,
    pick: impl Fn(&str) -> bool,
) -> Option<Option<String>> {
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(heap, lock);
        let index = pg_sys::index_open(index, lock);
        let found = (|| {
            let col = column_of(heap, column)?;
            let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(
                pg_sys::get_atttype((*heap).rd_id, i16::try_from(col).ok()?),
                &mut output,
                &mut varlena,
            );
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            text_eq_key(&mut keys[0], index, 1, pgrx::IntoDatum::into_datum(first)?);
            text_eq_key(&mut keys[1], index, 2, pgrx::IntoDatum::into_datum(second)?);
            let scan = begin_index_scan_in(heap, index, &raw mut pg_sys::SnapshotSelfData, 2);
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let mut newest = None;
            while pg_sys::index_getnext_slot(
                scan,
                pg_sys::ScanDirection::BackwardScanDirection,
                slot,
            ) {
                pgrx::check_for_interrupts!();
                let mut is_null = false;
                let d = pg_sys::slot_getattr(slot, col, &mut is_null);
                if is_null {
                    continue;
                }
                let text = CStr::from_ptr(pg_sys::OidOutputFunctionCall(output, d))
                    .to_string_lossy()
                    .into_owned();
                if pick(&text) {
                    newest = Some(text);
                    break;
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::index_endscan(scan);
            Some(newest)
        })();
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// `key` := the index's column `attno` (1-based, text) equals `value`,
/// compared under the column's collation in the index.
///
/// # Safety
/// `index` open, `attno` one of its key columns, `value` a text datum that
/// outlives the scan.
pub(crate) unsafe fn text_eq_key(
    key: &mut pg_sys::ScanKeyData,
    index: pg_sys::Relation,
    attno: pg_sys::AttrNumber,
    value: pg_sys::Datum,
) {
    unsafe {
        let collation = *(*index)
            .rd_indcollation
            .add(usize::try_from(attno - 1).unwrap_or(0));
        pg_sys::ScanKeyEntryInitialize(
            key,
            0,
            attno,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            collation,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            value,
        );
    }
}

/// `key` := the index's column `attno` IS NULL (btree keeps NULLs as keys).
///
/// # Safety
/// `attno` one of the index's key columns.
pub(crate) unsafe fn is_null_key(key: &mut pg_sys::ScanKeyData, attno: pg_sys::AttrNumber) {
    unsafe {
        pg_sys::ScanKeyEntryInitialize(
            key,
            (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
            attno,
            0, // InvalidStrategy: a NULL test, no operator
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::Datum::from(0usize),
        );
    }
}

/// The 0-based attribute number of column `name` of `rel`.
pub(crate) unsafe fn column(rel: pg_sys::Relation, name: &CStr) -> Option<usize> {
    unsafe {
        let n = pg_sys::SPI_fnumber((*rel).rd_att, name.as_ptr());
        usize::try_from(n).ok().filter(|n| *n > 0).map(|n| n - 1)
    }
}

/// The values of text column `column` of every row of `heap` whose key in
/// `index` (a btree whose first column is text) equals `key` (`None`: IS
/// NULL), in the active snapshot: what `SELECT column FROM heap WHERE
/// first_column = key` returns, without an executor per call. Used where
/// one such read per run is made for every run of a table (attach's
/// numbering).
///
/// None when it cannot be read that way: no active snapshot, an index of
/// another table, no such column, or no SELECT right of the current user
/// on the table.
///
/// # Safety
/// Inside a transaction; the caller holds a lock on `heap`.
pub(crate) unsafe fn texts_where_first_key(
    heap: pg_sys::Oid,
    index: pg_sys::Oid,
    key: Option<&str>,
    column: &CStr,
) -> Option<Vec<Option<String>>> {
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::table_open(heap, lock);
        let index = pg_sys::index_open(index, lock);
        let found = (|| {
            if (*(*index).rd_index).indrelid != (*heap).rd_id
                || pg_sys::pg_class_aclcheck(
                    (*heap).rd_id,
                    pg_sys::GetUserId(),
                    pg_sys::ACL_SELECT as pg_sys::AclMode,
                ) != pg_sys::AclResult::ACLCHECK_OK
            {
                return None;
            }
            let col = column_of(heap, column)?;
            let mut scankey: pg_sys::ScanKeyData = std::mem::zeroed();
            match key {
                Some(k) => text_eq_key(&mut scankey, index, 1, pgrx::IntoDatum::into_datum(k)?),
                None => is_null_key(&mut scankey, 1),
            }
            let scan = begin_index_scan(heap, index, 1);
            pg_sys::index_rescan(scan, &mut scankey, 1, std::ptr::null_mut(), 0);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let mut values = Vec::new();
            while pg_sys::index_getnext_slot(
                scan,
                pg_sys::ScanDirection::ForwardScanDirection,
                slot,
            ) {
                pgrx::check_for_interrupts!();
                let mut is_null = false;
                let d = pg_sys::slot_getattr(slot, col, &mut is_null);
                values.push(if is_null {
                    None
                } else {
                    String::from_datum(d, false)
                });
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::index_endscan(scan);
            Some(values)
        })();
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// The 1-based attribute number of column `name` of `rel`.
unsafe fn column_of(rel: pg_sys::Relation, name: &CStr) -> Option<i32> {
    unsafe {
        let n = pg_sys::SPI_fnumber((*rel).rd_att, name.as_ptr());
        (n > 0).then_some(n)
    }
}
