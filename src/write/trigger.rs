//! The events trigger: every INSERT or COPY into a protected log, whatever
//! the route, reaches the write core ([`super::core`]) through it.

use super::core::{lock_and_decide, log_plans, Adopting};
use crate::errors::{internal, or_raise, raise, WfError};
use crate::pg::counters;
use crate::pg::log_shape;
use crate::pg::payload::Payload;
use crate::pg::row_origin;
use crate::rules::event_id;
use crate::rules::validate;
use crate::write::run_cache;
use crate::write::skipped;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::convert::Infallible;
use std::ffi::CStr;

/// Reads one column (by attribute number, None: absent) of the trigger's
/// row as text: a text or varchar value as it is, any other through its
/// type's output function (a built-in one, since [`log_shape::check`]
/// admitted the column's type).
unsafe fn column_text(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attno: Option<i16>,
) -> Option<String> {
    let attno = attno?;
    unsafe {
        let typid = PgTupleDesc::from_pg_unchecked(desc)
            .get(usize::try_from(attno).ok()?.checked_sub(1)?)?
            .atttypid;
        if typid == pg_sys::TEXTOID || typid == pg_sys::VARCHAROID {
            let mut is_null = true;
            let d = pg_sys::SPI_getbinval(tuple, desc, attno.into(), &mut is_null);
            if is_null {
                return None;
            }
            let p = pg_sys::text_to_cstring(d.cast_mut_ptr());
            let text = CStr::from_ptr(p).to_string_lossy().into_owned();
            pg_sys::pfree(p.cast());
            return Some(text);
        }
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
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, Infallible> {
    // Citus moving or splitting a shard of a distributed log: the rows it
    // replays were admitted and numbered on the old shard, with the run
    // rows that come along in the co-located shard; they are copies, not
    // appends (src/pg/citus.rs).
    if crate::pg::citus::in_shard_transfer() {
        return Ok(trigger.new());
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
        return Ok(trigger.new());
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
        // A row of a COPY FROM into this log, or else one that may change
        // what such a COPY has kept of the log (src/pg/row_origin.rs).
        let copy = row_origin::row_of_copy_into(rel_oid).map(|c| c.number);
        if copy.is_none() {
            run_cache::forget_copied();
        }
        let seq_assigned = match crate::write::batch::admit_if_reserved(rel_oid, &addr)? {
            // A batch row the batch's lock already covers: no statement.
            Some(seq) => {
                run_cache::forget_copied();
                seq
            }
            None => Spi::connect_mut(|client| {
                // SAFETY: the trigger's relation is open for the whole call.
                let plans = unsafe { log_plans(client, rel) }?;
                // A row an INSERT … ON CONFLICT may still skip, by an
                // arbiter other than the two that cannot skip an accepted
                // row (src/write/skipped.rs).
                let skip = row_origin::on_conflict_into(rel_oid).and_then(|(depth, arbiters)| {
                    // SAFETY: the trigger's open relation.
                    unsafe { skipped::may_skip(rel, &cols, &plans, &arbiters) }.then_some(depth)
                });
                lock_and_decide(client, &plans, &addr, adopting, copy, skip)
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

    // One new tuple with seq (and a missing id) set: the columns'
    // positions and types are the ones log_shape::check admitted (seq
    // bigint, id text or varchar, which share text's representation).
    // SAFETY: the trigger's own row and its relation's descriptor.
    let row = unsafe {
        let natts = usize::try_from((*desc).natts).unwrap_or(0);
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        let mut replace = vec![false; natts];
        let mut set = |attno: Option<i16>, value: Option<pg_sys::Datum>| {
            let Some(at) = attno.and_then(|a| usize::try_from(a).ok()?.checked_sub(1)) else {
                internal!("cannot stamp event row: no such column")
            };
            match value {
                Some(v) => values[at] = v,
                None => nulls[at] = true,
            }
            replace[at] = true;
        };
        set(cols.attno("seq"), seq_assigned.into_datum());
        if id.is_none() {
            set(cols.attno("id"), event_id::next().into_datum());
        }
        let stamped = pg_sys::heap_modify_tuple(
            tuple,
            desc,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
            replace.as_mut_ptr(),
        );
        PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(desc), stamped)
    };
    Ok(Some(row))
}
