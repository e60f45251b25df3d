//! SPI plans prepared once per backend and kept (`SPI_keepplan`), shared by
//! every module with a hot path (append, batch, fan-in), the argument types
//! they are prepared with, and how their rows are read ([`required`]).

use crate::errors::{internal, or_internal};
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::PgOid;
use std::cell::Cell;

pub const TEXT: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID);
pub const BOOL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BOOLOID);
pub const JSONB: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::JSONBOID);
pub const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);
/// The operators of the write path's statements, spelled with their schema:
/// the trigger and the append functions do not pin search_path (see
/// sql/functions.sql), so nothing they run may depend on it. Every other
/// name in those statements is qualified too (`workflow_ext.`,
/// `pg_catalog.`), and tests/pg_regress/sql/privileges.sql puts look-alike
/// operators, functions and tables ahead of pg_catalog to prove it.
pub const EQ: &str = "OPERATOR(pg_catalog.=)";
pub const PLUS: &str = "OPERATOR(pg_catalog.+)";
pub const MINUS: &str = "OPERATOR(pg_catalog.-)";

/// `'{a,b}'`: an array literal of type names, for `type {EQ} ANY (…)`; it
/// takes the type of the column (the enum, or the DevKit's varchar).
pub fn type_list<T: std::fmt::Display>(types: impl IntoIterator<Item = T>) -> String {
    let names: Vec<String> = types.into_iter().map(|t| t.to_string()).collect();
    format!("'{{{}}}'", names.join(","))
}

/// `s` as an SQL string literal (PostgreSQL's quote_literal: quotes
/// doubled, and E'' with doubled backslashes when it has any).
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

pub const INT8: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT8OID);
pub const TEXTARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTARRAYOID);
pub const JSONBARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::JSONBARRAYOID);
pub const INT8ARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT8ARRAYOID);
pub const BOOLARRAY: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BOOLARRAYOID);

/// Prepares `sql` and keeps the plan for the life of the backend. The
/// statements are fixed strings of this crate over the extension's own
/// tables: failing to prepare one means the extension is broken, so it is
/// reported as an internal error.
pub fn keep(client: &SpiClient<'_>, sql: &str, args: &[PgOid]) -> OwnedPreparedStatement {
    or_internal!(client.prepare_mut(sql, args), "cannot prepare \"{sql}\"").keep()
}

/// Whether `workflow_ext.runs` is keyed by (log, run_id), as from 0.3.0 on.
/// The binary is shared by every version's SQL: until `ALTER EXTENSION
/// workflow_ext UPDATE` has run, a database at 0.1.0 or 0.2.0 keeps
/// appending to (and purging) `workflow_ext.events` with the old key. Asked
/// on every append: the answer is kept until any relation's cache entry is
/// invalidated ([`register_invalidation`]), which any DDL on the run table,
/// an extension update, drop or create among them, does.
pub fn runs_keyed_by_log() -> bool {
    if let Some(keyed) = RUNS_KEYED.get() {
        return keyed;
    }
    // SAFETY: catalog lookups by name; each returns InvalidOid /
    // InvalidAttrNumber when the object is missing.
    let keyed = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            true
        } else {
            let runs = pg_sys::get_relname_relid(c"runs".as_ptr(), nsp);
            runs != pg_sys::InvalidOid
                && pg_sys::get_attnum(runs, c"log".as_ptr()) != pg_sys::InvalidAttrNumber as i16
        }
    };
    RUNS_KEYED.set(Some(keyed));
    keyed
}

thread_local! {
    static RUNS_KEYED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Forgets [`runs_keyed_by_log`]'s answer whenever a relation's cache entry
/// is invalidated (from `_PG_init`).
pub(crate) fn register_invalidation() {
    // SAFETY: registers a callback that only clears a thread-local.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_runs_key), pg_sys::Datum::from(0));
    }
}

unsafe extern "C-unwind" fn forget_runs_key(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    RUNS_KEYED.set(None);
}

/// Column `n` of the current row, which our own statements never return
/// NULL.
pub fn required<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &SpiTupleTable<'_>,
    n: usize,
    what: &str,
) -> T {
    or_internal!(row.get::<T>(n), "{what}").unwrap_or_else(|| internal!("{what} is NULL"))
}
