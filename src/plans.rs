//! SPI plans prepared once per backend and kept (`SPI_keepplan`), shared by
//! every module with a hot path (append, fan-in), and the argument types
//! they are prepared with.

use crate::errors::or_internal;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;

pub const TEXT: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID);
pub const BOOL: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::BOOLOID);
pub const JSONB: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::JSONBOID);
pub const INT4: PgOid = PgOid::BuiltIn(pg_sys::BuiltinOid::INT4OID);

/// Prepares `sql` and keeps the plan for the life of the backend. The
/// statements are fixed strings of this crate over the extension's own
/// tables: failing to prepare one means the extension is broken, so it is
/// reported as an internal error.
pub fn keep(client: &SpiClient<'_>, sql: &str, args: &[PgOid]) -> OwnedPreparedStatement {
    or_internal!(client.prepare_mut(sql, args), "cannot prepare \"{sql}\"").keep()
}
