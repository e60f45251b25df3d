//! Reading `workflow_ext.events` in replay order straight from its primary
//! key `(run_id, seq)`, for `replay` and `scan`: an index scan driven from
//! Rust, each row's columns read where the scan left them. Through SPI the
//! same rows cost an executor, a copy of every row into a tuple table and a
//! second deform, which made a replay take 1.7× the time of a plain read of
//! the same columns (BENCHMARKS.md).
//!
//! Only where SQL would show the same rows: the caller must hold SELECT on
//! the table itself and row-level security must not apply; otherwise
//! [`OwnLogScan::open`] says no and the caller reads through SPI. The scan
//! uses the calling statement's snapshot, as a query in the function would.

use crate::pg::index_scan::{begin_index_scan, column, own_log_and_index, text_eq_key};
use pgrx::pg_sys;

/// Index of each value [`OwnLogScan::next`] fills, the order `replay`'s
/// query selects them in.
pub const SEQ: usize = 0;
pub const TYPE: usize = 1;
pub const CORRELATION_ID: usize = 2;
pub const ID: usize = 3;
pub const RUN_ID: usize = 4;
pub const TOKEN: usize = 5;

pub struct OwnLogScan {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
    /// The context the scan was opened in. The index AM allocates state on
    /// demand during a fetch (btree's list of killed items, the first time
    /// it meets a dead tuple); that must outlive the caller's per-batch
    /// context, so every fetch runs here.
    cxt: pg_sys::MemoryContext,
    /// Attribute numbers (0-based) of seq, type, correlation_id, id, run_id,
    /// payload in the table.
    cols: [usize; 6],
    hook_created: pg_sys::Oid,
    // Kept alive for the scan: it points at them.
    _key: Box<pg_sys::ScanKeyData>,
    _run_id: Option<pg_sys::Datum>,
}

impl OwnLogScan {
    /// Opens the scan of one run (`Some`) or of every run in (run_id, seq)
    /// order; `None` when the direct read is not allowed or the table is not
    /// laid out as expected (then read through SPI).
    ///
    /// # Safety
    /// Inside a transaction with an active snapshot; [`Self::finish`] must
    /// be called on success (an error instead leaves the clean-up to the
    /// transaction's abort, which releases locks, pins and the scan).
    pub unsafe fn open(run_id: Option<&str>) -> Option<Self> {
        unsafe {
            let (rel_oid, idx_oid) = own_log_and_index(c"events_pkey", &[pg_sys::ACL_SELECT])?;
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let heap = pg_sys::table_open(rel_oid, lock);
            // Its rows in Citus's shards (the callers read those through
            // SQL already): never the shell's own heap.
            if crate::pg::citus::holds(heap) {
                pg_sys::table_close(heap, lock);
                return None;
            }
            let index = pg_sys::index_open(idx_oid, lock);
            let names = [
                c"seq",
                c"type",
                c"correlation_id",
                c"id",
                c"run_id",
                c"payload",
            ];
            let mut cols = [0usize; 6];
            let mut ok = true;
            for (i, n) in names.iter().enumerate() {
                match column(heap, n) {
                    Some(c) => cols[i] = c,
                    None => ok = false,
                }
            }
            // The key must be (run_id, seq), in that order.
            let ix = (*index).rd_index;
            let keys = std::slice::from_raw_parts(
                (*ix).indkey.values.as_ptr(),
                usize::try_from((*ix).indnkeyatts).unwrap_or(0),
            );
            ok &= keys.len() == 2
                && usize::try_from(keys[0]).ok() == Some(cols[RUN_ID] + 1)
                && usize::try_from(keys[1]).ok() == Some(cols[SEQ] + 1);
            let hook_created = pg_sys::Oid::from(0u32);
            let mut me = OwnLogScan {
                heap,
                index,
                scan: std::ptr::null_mut(),
                slot: std::ptr::null_mut(),
                cxt: pg_sys::CurrentMemoryContext,
                cols,
                hook_created,
                _key: Box::new(std::mem::zeroed()),
                _run_id: None,
            };
            if !ok {
                me.close_relations();
                return None;
            }
            let scan = begin_index_scan(heap, index, i32::from(run_id.is_some()));
            me.scan = scan;
            me.slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            if let Some(run_id) = run_id {
                let value = pgrx::IntoDatum::into_datum(run_id)
                    .unwrap_or_else(|| crate::errors::internal!("run id datum"));
                text_eq_key(&mut me._key, index, 1, value);
                me._run_id = Some(value);
                pg_sys::index_rescan(scan, &mut *me._key, 1, std::ptr::null_mut(), 0);
            } else {
                pg_sys::index_rescan(scan, std::ptr::null_mut(), 0, std::ptr::null_mut(), 0);
            }
            Some(me)
        }
    }

    /// The OID of the enum label hook_created (the row's type is compared
    /// with it to know when to read a token).
    pub fn with_hook_created(mut self, oid: pg_sys::Oid) -> Self {
        self.hook_created = oid;
        self
    }

    /// The next row's values, in the order of the constants above (the
    /// token: a hook_created's payload `token` when it is a JSON string).
    /// False at the end.
    ///
    /// # Safety
    /// Between [`Self::open`] and [`Self::finish`]; the datums point into
    /// the scan's current buffer or the current memory context and are
    /// valid until the next call. Only the token is allocated in the
    /// current context.
    pub unsafe fn next(&mut self, values: &mut [pg_sys::Datum; 6], nulls: &mut [bool; 6]) -> bool {
        unsafe {
            let (scan, slot) = (self.scan, self.slot);
            let found = pgrx::PgMemoryContexts::For(self.cxt).switch_to(|_| {
                let found = pg_sys::index_getnext_slot(
                    scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                    slot,
                );
                if found {
                    pg_sys::slot_getallattrs(slot);
                }
                found
            });
            if !found {
                return false;
            }
            let natts = usize::try_from((*self.slot).tts_nvalid).unwrap_or(0);
            let v = std::slice::from_raw_parts((*self.slot).tts_values, natts);
            let n = std::slice::from_raw_parts((*self.slot).tts_isnull, natts);
            for i in SEQ..TOKEN {
                values[i] = v[self.cols[i]];
                nulls[i] = n[self.cols[i]];
            }
            nulls[TOKEN] = true;
            let payload = self.cols[TOKEN];
            if !nulls[TYPE]
                && pg_sys::Oid::from(values[TYPE].value() as u32) == self.hook_created
                && !n[payload]
            {
                if let Some(token) = token_of(v[payload]) {
                    values[TOKEN] = token;
                    nulls[TOKEN] = false;
                }
            }
            true
        }
    }

    /// Ends the scan and closes the relations (keeping their locks to the
    /// end of the transaction, as a query would).
    pub fn finish(mut self) {
        // SAFETY: opened by `open`, not yet closed.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_endscan(self.scan);
            self.close_relations();
        }
    }

    unsafe fn close_relations(&mut self) {
        unsafe {
            pg_sys::index_close(self.index, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(self.heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// `payload -> 'token'` as text when it is a JSON string (what the writer
/// takes as a hook's token), else None.
unsafe fn token_of(payload: pg_sys::Datum) -> Option<pg_sys::Datum> {
    unsafe {
        let key = pgrx::IntoDatum::into_datum("token")?;
        let field = pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_object_field,
            &[Some(payload), Some(key)],
        )?;
        let kind = pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(field)])?;
        if kind != "string" {
            return None;
        }
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_object_field_text,
            &[Some(payload), Some(key)],
        )
    }
}
