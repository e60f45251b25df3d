//! The columns of a protected log and of an audited source, and the types
//! they may have.
//!
//! Why a list of types and not "anything that casts to text": the owner of an
//! attached table controls its column types, and with them every cast,
//! operator and output function a query on those columns calls. The events
//! trigger is SECURITY DEFINER and `stuck_runs` reads attached logs as the
//! extension's owner: a `run_id` of the owner's own type, with an implicit
//! cast to text, ran the owner's cast function as superuser. With the types
//! below, every function the extension's queries call on a column is a
//! built-in one. The check reads only the relation's tuple descriptor, so
//! the trigger makes it on every row at no measurable cost.

use crate::errors::{raise, WfError, WfResult};
use pgrx::pg_sys;
use pgrx::pg_sys::BuiltinOid as B;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CStr;

/// What the columns are read for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A protected log (`workflow_ext.events` or an attached table): written
    /// through the trigger, read by SECURITY DEFINER code.
    Log,
    /// A table `attach` is about to protect: a log's rules, but `seq` may
    /// be missing (attach adds it).
    Attaching,
    /// A source `replay`/`scan` audit (as the caller); `seq` may be any
    /// integer type there, and a `payload` that is not jsonb is not read.
    Source,
}

/// The column names the extension reads, and the types each may have.
/// One list for the trigger, `attach`, `stuck_runs`, `replay` and `scan`.
pub(crate) const COLUMNS: [(&str, &[B]); 7] = [
    ("id", &[B::TEXTOID, B::VARCHAROID]),
    ("run_id", &[B::TEXTOID, B::VARCHAROID]),
    ("correlation_id", &[B::TEXTOID, B::VARCHAROID]),
    // and the extension's enum workflow_ext.event_type (see `allowed`)
    ("type", &[B::TEXTOID, B::VARCHAROID]),
    ("seq", &[B::INT8OID]),
    ("created_at", &[B::TIMESTAMPOID, B::TIMESTAMPTZOID]),
    ("payload", &[B::JSONBOID]),
];

/// The columns every log and source must have.
pub(crate) const REQUIRED: [&str; 4] = ["id", "run_id", "type", "correlation_id"];

/// Attribute numbers (1-based) of the columns a log or source has, in
/// [`COLUMNS`] order; 0 where it has none.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Columns(pub [i16; COLUMNS.len()]);

impl Columns {
    pub(crate) fn attno(&self, name: &str) -> Option<i16> {
        let i = COLUMNS.iter().position(|(n, _)| *n == name)?;
        (self.0[i] > 0).then_some(self.0[i])
    }
}

thread_local! {
    /// OID of workflow_ext.event_type, looked up once per backend.
    static EVENT_TYPE_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// The extension's enum type (the `type` of its own log).
fn event_type_oid() -> pg_sys::Oid {
    let cached = EVENT_TYPE_OID.with(Cell::get);
    if cached != pg_sys::InvalidOid {
        return cached;
    }
    // SAFETY: catalog lookups by name, in a transaction; missing_ok.
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::GetSysCacheOid(
            pg_sys::SysCacheIdentifier::TYPENAMENSP as _,
            pg_sys::Anum_pg_type_oid as _,
            pg_sys::Datum::from(c"event_type".as_ptr()),
            pg_sys::Datum::from(nsp),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    EVENT_TYPE_OID.with(|c| c.set(oid));
    oid
}

fn allowed(column: usize, typ: pg_sys::Oid, usage: Use) -> bool {
    let (name, types) = COLUMNS[column];
    if types.iter().any(|t| typ == t.value()) {
        return true;
    }
    match (name, usage) {
        ("type", _) => typ == event_type_oid(),
        // A source's seq is read as seq::bigint, a built-in cast.
        ("seq", Use::Source) => typ == B::INT2OID.value() || typ == B::INT4OID.value(),
        // A source's payload is read only when it is jsonb.
        ("payload", Use::Source) => true,
        _ => false,
    }
}

/// The human names of the types a column may have, for the error.
pub(crate) fn allowed_names(column: &str, usage: Use) -> &'static str {
    match (column, usage) {
        ("type", _) => "text, character varying or workflow_ext.event_type",
        ("seq", Use::Log | Use::Attaching) => "bigint",
        ("seq", Use::Source) => "smallint, integer or bigint",
        ("created_at", _) => "timestamp or timestamp with time zone",
        ("payload", _) => "jsonb",
        _ => "text or character varying",
    }
}

/// Finds the columns of `desc` and checks their types; `name` is the
/// relation's name for the errors. Reads the descriptor only.
///
/// # Safety
/// `desc` is a valid tuple descriptor.
pub(crate) unsafe fn check(
    desc: pg_sys::TupleDesc,
    name: &dyn Fn() -> String,
    usage: Use,
) -> WfResult<Columns> {
    let mut found = Columns::default();
    // SAFETY: a valid descriptor, borrowed (not released) for this call;
    // PgTupleDesc reads its attributes on every major (18 moved them).
    let tupdesc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    for (i, a) in tupdesc.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        // SAFETY: attname is a NUL-terminated NameData.
        let attname = unsafe { CStr::from_ptr(a.attname.data.as_ptr()) };
        let Some(col) = COLUMNS
            .iter()
            .position(|(n, _)| n.as_bytes() == attname.to_bytes())
        else {
            continue;
        };
        if !allowed(col, a.atttypid, usage) {
            return Err(WfError::LogColumnType {
                log: name(),
                column: COLUMNS[col].0,
                // SAFETY: format_type_be of an existing type.
                actual: unsafe { type_name(a.atttypid) },
                allowed: allowed_names(COLUMNS[col].0, usage),
            });
        }
        found.0[col] = i16::try_from(i + 1).unwrap_or(i16::MAX);
    }
    // A log's trigger stamps seq, so a log needs one too.
    let seq = (usage == Use::Log).then_some("seq");
    let missing: Vec<&'static str> = REQUIRED
        .into_iter()
        .chain(seq)
        .filter(|c| found.attno(c).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(WfError::SourceMissingColumns {
            source: name(),
            missing,
        });
    }
    Ok(found)
}

/// A type's name as PostgreSQL prints it (qualified when not visible).
///
/// # Safety
/// In a transaction.
unsafe fn type_name(t: pg_sys::Oid) -> String {
    // SAFETY: format_type_be palloc's a NUL-terminated string.
    unsafe {
        CStr::from_ptr(pg_sys::format_type_be(t))
            .to_string_lossy()
            .into_owned()
    }
}

/// Checks the columns of relation `rel` (opened and closed here).
pub(crate) fn check_relation(rel: pg_sys::Oid, name: &str, usage: Use) -> WfResult<Columns> {
    // SAFETY: try_relation_open returns NULL for a missing relation; the
    // descriptor is read while the relation is open.
    unsafe {
        let r = pg_sys::try_relation_open(rel, pg_sys::AccessShareLock as _);
        if r.is_null() {
            return Err(WfError::SourceNotFound { oid: rel.to_u32() });
        }
        // A protected log is a plain table (a view's query is code).
        let result = if usage != Use::Source
            && (*(*r).rd_rel).relkind != pg_sys::RELKIND_RELATION as core::ffi::c_char
        {
            Err(WfError::SourceNotATable {
                source: name.to_string(),
            })
        } else {
            check((*r).rd_att, &|| name.to_string(), usage)
        };
        pg_sys::relation_close(r, pg_sys::AccessShareLock as _);
        result
    }
}

/// Checks that the columns the extension reads on `log` have the types of
/// this file (42804) and that the needed ones exist (42703; `seq`
/// only when `attaching` is false: attach adds it). Reads the catalog only.
/// Used by attach, the DDL watcher and stuck_runs.
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn check_log_columns(log: Option<pg_sys::Oid>, attaching: Option<bool>) {
    let Some(log) = log else {
        raise!(WfError::NullArgument { arg: "log" })
    };
    let usage = if attaching.unwrap_or(false) {
        Use::Attaching
    } else {
        Use::Log
    };
    let name = crate::pg::owner::relation_name(log);
    if let Err(e) = check_relation(log, &name, usage) {
        raise!(e)
    }
}
