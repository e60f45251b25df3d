//! Rows streamed from a cursor into one auditor per run.
//!
//! Memory: rows come from a cursor [`BATCH`] at a time and each batch's tuple
//! table is freed before the next fetch, so a replay holds one batch plus
//! the auditor's per-entity state, however long the log is.

use super::auditor::{Auditor, Finding, Seq, StoredEvent};
use super::source::Source;
use crate::errors::or_internal;
use crate::pg::log_scan::OwnLogScan;
use crate::rules::lifecycle::EventType;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgMemoryContexts;

/// Rows fetched from the cursor at a time.
const BATCH: i64 = 1_000;

/// A text datum as &str without copying it: short, uncompressed values (all
/// of an event's ids and types) are read where they lie; anything toasted
/// goes through PostgreSQL's detoaster (into the current memory context). Invalid UTF-8 reads as absent.
///
/// # Safety
/// `d` must be a non-null text/varchar datum that outlives `'a`.
unsafe fn text<'a>(d: pg_sys::Datum) -> Option<&'a str> {
    unsafe {
        let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            p = pg_sys::pg_detoast_datum_packed(p);
        }
        let len = pgrx::varlena::varsize_any_exhdr(p);
        let bytes = std::slice::from_raw_parts(pgrx::varlena::vardata_any(p) as *const u8, len);
        std::str::from_utf8(bytes).ok()
    }
}

/// Streams `query` (columns, in this order: seq, type, correlation_id, id,
/// run_id, hook token; ordered by run, then replay order) through one
/// auditor per run.
/// `emit` gets every finding; `on_run_end` the run id and its event count;
/// `on_token` every hook token taken or tried.
/// NULL and '' run ids are different runs (and both invalid).
///
/// Rows are deformed with one call each and their text read in place: going
/// through pgrx's per-value accessors (a guarded FFI call per value) cost as
/// much as the rest of the replay together.
#[allow(
    clippy::too_many_arguments,
    reason = "the query and its arguments, the source, the direct-read choice and three callbacks: \
              a struct around them would only rename them"
)]
pub(super) fn stream(
    client: &SpiClient<'_>,
    query: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    src: &Source,
    direct: Option<Option<&str>>,
    on_run_end: impl FnMut(Option<&str>, i64),
    on_token: impl FnMut(&str),
    emit: impl FnMut(&StoredEvent<'_>, Finding),
) {
    let mut feed = Feeder {
        src,
        auditor: Auditor::new(),
        current: None,
        position: 0,
        on_run_end,
        on_token,
        emit,
    };
    let mut values = [pg_sys::Datum::from(0usize); 6];
    let mut nulls = [true; 6];
    let mut scratch = PgMemoryContexts::new("workflow_ext audit batch");
    // The own log, read straight from its primary key (src/pg/log_scan.rs).
    let scan = match (direct.filter(|_| !src.distributed), &src.enum_labels) {
        // SAFETY: in the function's transaction, with its snapshot.
        (Some(run), Some(labels)) => unsafe { OwnLogScan::open(run) }.map(|scan| {
            let hook = labels
                .iter()
                .find(|(_, l)| l == EventType::HookCreated.as_str())
                .map_or(pg_sys::InvalidOid, |(o, _)| *o);
            scan.with_hook_created(hook)
        }),
        _ => None,
    };
    if let Some(mut scan) = scan {
        let mut more = true;
        while more {
            // SAFETY: the values read in a batch live in the scan's buffer or
            // in the scratch context, reset only after the batch.
            unsafe {
                scratch.switch_to(|_| {
                    for _ in 0..BATCH {
                        // A log can be long: let a cancel or
                        // statement_timeout end the audit.
                        check_for_interrupts!();
                        if !scan.next(&mut values, &mut nulls) {
                            more = false;
                            break;
                        }
                        feed.row(&values, &nulls);
                    }
                });
                scratch.reset();
            }
        }
        scan.finish();
        feed.finish();
        return;
    }
    let mut cursor = or_internal!(client.try_open_cursor(query, args), "open replay cursor");
    loop {
        // SAFETY: SPI_tuptable is the table the fetch just filled; every
        // datum read below lives in it until it is freed at the end of this
        // iteration.
        let table = {
            let batch = or_internal!(cursor.fetch(BATCH), "fetch replay rows");
            if batch.is_empty() {
                break;
            }
            unsafe { pg_sys::SPI_tuptable }
        };
        let (tuples, desc) = unsafe {
            (
                std::slice::from_raw_parts((*table).vals, (*table).numvals as usize),
                (*table).tupdesc,
            )
        };
        // Detoasted copies (rare: ids and types are short) go to a scratch
        // context reset with each batch.
        // SAFETY: the closure only reads the batch and writes Rust memory.
        unsafe {
            scratch.switch_to(|_| {
                for &tuple in tuples {
                    check_for_interrupts!();
                    pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                    feed.row(&values, &nulls);
                }
            });
            scratch.reset();
        }
        // pgrx's tuple table has no Drop: free it here, or every batch stays
        // allocated until the function returns.
        // SAFETY: nothing refers to the table any more.
        unsafe {
            pg_sys::SPI_freetuptable(table);
            pg_sys::SPI_tuptable = std::ptr::null_mut();
        }
    }
    feed.finish();
}

/// What `stream` does with each row: one auditor per run, reset between
/// runs.
struct Feeder<'s, R, T, E> {
    src: &'s Source,
    auditor: Auditor,
    /// The run being audited: None before the first row; Some(None) for the
    /// rows whose run_id is NULL.
    current: Option<Option<String>>,
    position: i64,
    on_run_end: R,
    on_token: T,
    emit: E,
}

impl<R, T, E> Feeder<'_, R, T, E>
where
    R: FnMut(Option<&str>, i64),
    T: FnMut(&str),
    E: FnMut(&StoredEvent<'_>, Finding),
{
    /// # Safety
    /// `values` (seq, type, correlation_id, id, run_id, token) are valid
    /// datums where `nulls` is false, of the types `columns` selects (type:
    /// the enum's OID for the own log).
    unsafe fn row(&mut self, values: &[pg_sys::Datum; 6], nulls: &[bool; 6]) {
        let txt = |i: usize| {
            if nulls[i] {
                None
            } else {
                unsafe { text(values[i]) }
            }
        };
        let type_name = match (nulls[1], &self.src.enum_labels) {
            (true, _) => None,
            (false, Some(labels)) => {
                let oid = pg_sys::Oid::from(values[1].value() as u32);
                labels
                    .iter()
                    .find(|(o, _)| *o == oid)
                    .map(|(_, l)| l.as_str())
            }
            (false, None) => txt(1),
        };
        let mut event = StoredEvent {
            position: 0,
            seq: match (self.src.has_seq, nulls[0]) {
                (false, _) => Seq::NotStored,
                (true, true) => Seq::Null,
                (true, false) => Seq::Value(values[0].value() as i64),
            },
            type_name,
            correlation_id: txt(2),
            id: txt(3),
            run_id: txt(4),
            token: txt(5),
        };
        if self.current.as_ref().map(Option::as_deref) != Some(event.run_id) {
            if let Some(done) = self.current.take() {
                (self.on_run_end)(done.as_deref(), self.position);
            }
            self.auditor.reset();
            self.position = 0;
            self.current = Some(event.run_id.map(str::to_string));
        }
        self.position = self.position.saturating_add(1);
        event.position = self.position;
        if let Some(token) = event.token {
            (self.on_token)(token);
        }
        for f in self.auditor.feed(&event) {
            (self.emit)(&event, f);
        }
    }

    fn finish(mut self) {
        if let Some(done) = self.current.take() {
            (self.on_run_end)(done.as_deref(), self.position);
        }
    }
}
