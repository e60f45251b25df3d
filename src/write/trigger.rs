//! The events trigger: every INSERT or COPY into a protected log, whatever
//! the route, reaches the write core ([`super::core`]) through it.

use super::core::{lock_and_decide, log_plans, Adopting};
use crate::errors::{internal, or_internal, or_raise, raise, WfError};
use crate::pg::counters;
use crate::pg::log_shape;
use crate::pg::payload::Payload;
use crate::rules::event_id;
use crate::rules::validate;
use pgrx::prelude::*;
use std::convert::Infallible;
use std::ffi::CStr;

/// Reads one column (by attribute number, 0: absent) of the trigger's row
/// as text, through its type's output function: a built-in one, since
/// [`log_shape::check`] admitted the column's type.
unsafe fn column_text(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attno: Option<i16>,
) -> Option<String> {
    let attno = attno?;
    unsafe {
        let p = pg_sys::SPI_getvalue(tuple, desc, attno.into());
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

/// The trigger's table as `schema.name`, for errors.
fn trigger_table(trigger: &PgTrigger<'_>) -> String {
    match (trigger.table_schema(), trigger.table_name()) {
        (Ok(schema), Ok(name)) => format!("{schema}.{name}"),
        _ => "the event log".into(),
    }
}

/// BEFORE INSERT … FOR EACH ROW (ENABLE ALWAYS) on `workflow_ext.events`
/// and on every table `attach` put under the extension: validates the row
/// against the lifecycle, reading state from the table it fires on, and
/// stamps `seq` (and `id` when NULL). Columns are found by name, so the
/// DevKit's varchar columns and extra columns (`payload_cbor`,
/// `spec_version`) need nothing; a `payload` is checked when it is jsonb.
#[pg_trigger(sql = false)] // declared in sql/functions.sql
fn events_before_insert<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Infallible> {
    // Citus moving or splitting a shard of a distributed log: the rows it
    // replays were admitted and numbered on the old shard, with the run
    // rows that come along in the co-located shard; they are copies, not
    // appends (src/pg/citus.rs).
    if crate::pg::citus::in_shard_transfer() {
        return Ok(trigger.new().map(|row| row.into_owned()));
    }
    let data = trigger.trigger_data();
    // Citus copying the events of a log distribute() distributes: copies
    // too, of rows admitted and numbered here (src/pg/citus.rs).
    // SAFETY: a row-level trigger's open relation.
    let in_copy = unsafe {
        let rel = data.tg_relation;
        crate::pg::citus::in_distribution_copy(
            CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()),
            (*(*rel).rd_rel).relnamespace,
        )
    };
    if in_copy {
        return Ok(trigger.new().map(|row| row.into_owned()));
    }
    let tuple = data.tg_trigtuple;
    // SAFETY: a row-level INSERT trigger always has a relation and a tuple.
    let rel = data.tg_relation;
    let desc = unsafe { (*rel).rd_att };
    // Before any value is read or any statement runs: the columns' types
    // decide which functions both call (src/pg/log_shape.rs).
    // SAFETY: the open relation's descriptor.
    let cols = or_raise!(unsafe {
        log_shape::check(desc, &|| trigger_table(trigger), log_shape::Use::Log)
    });
    let (id, run_id, corr, type_name, seq, payload) = unsafe {
        let mut is_null = true;
        let payload = match cols.attno("payload") {
            Some(n) => pg_sys::SPI_getbinval(tuple, desc, n.into(), &mut is_null),
            None => pg_sys::Datum::from(0),
        };
        (
            column_text(tuple, desc, cols.attno("id")),
            column_text(tuple, desc, cols.attno("run_id")),
            column_text(tuple, desc, cols.attno("correlation_id")),
            column_text(tuple, desc, cols.attno("type")),
            column_text(tuple, desc, cols.attno("seq")),
            (!is_null).then(|| Payload::from_jsonb_datum(payload)),
        )
    };

    // A concurrent attach installs the trigger with two arguments,
    // 'adopting' and its transaction id, and reinstalls it without them
    // when every existing run is adopted (sql/attach.sql).
    // SAFETY: the trigger's own pg_trigger entry, for the whole call.
    let adopting = unsafe {
        let t = data.tg_trigger;
        ((*t).tgnargs == 2)
            .then(|| CStr::from_ptr(*(*t).tgargs.add(1)))
            .and_then(|xid| xid.to_str().ok()?.parse::<u32>().ok())
            .map(|began| Adopting {
                began: began.into(),
            })
    };
    let verdict = (|| {
        let addr = validate::address(run_id.as_deref(), corr.as_deref(), type_name.as_deref())?;
        validate::optional_ident("id", id.as_deref())?;
        if let Some(p) = payload {
            p.check()?;
        }
        // SAFETY: an open relation's OID.
        let rel_oid = unsafe { (*rel).rd_id };
        let seq_assigned = match crate::write::batch::admit_if_reserved(rel_oid, &addr)? {
            // A batch row the batch's lock already covers: no statement.
            Some(seq) => seq,
            None => Spi::connect_mut(|client| {
                // SAFETY: the trigger's relation is open for the whole call.
                let plans = unsafe { log_plans(client, rel) }?;
                lock_and_decide(client, &plans, &addr, adopting)
            })?,
        };
        match seq.as_deref().and_then(|s| s.parse::<i64>().ok()) {
            Some(given) if given != seq_assigned => Err(WfError::SeqMismatch {
                given,
                next: seq_assigned,
            }),
            _ => Ok(seq_assigned),
        }
    })();
    let seq_assigned = match verdict {
        Ok(seq) => {
            counters::count_appended();
            seq
        }
        Err(e) => {
            counters::count_refused(match &e {
                WfError::Refused { violation, .. } => Some(*violation),
                _ => None,
            });
            raise!(e)
        }
    };

    let mut row = trigger
        .new()
        .unwrap_or_else(|| internal!("INSERT trigger without NEW"))
        .into_owned();
    let stamped = row
        .set_by_name("seq", seq_assigned)
        .and_then(|()| match id {
            Some(_) => Ok(()),
            None => row.set_by_name("id", event_id::next()),
        });
    or_internal!(stamped, "cannot stamp event row");
    Ok(Some(row))
}
