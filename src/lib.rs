//! workflow_ext: workflow event-log invariants enforced inside PostgreSQL.
//!
//! Table of contents (one file per capability; each file's `#[pg_test]`s sit
//! beside it):
//! - [`lifecycle`]: the state machine, pure Rust, shared by writer and audit.
//! - [`validate`]: argument rules shared by every entry point.
//! - [`errors`]: every user-visible error and its SQLSTATE.
//! - [`event_id`]: `wevt_` + monotonic ULID ids.
//! - [`payload`]: the jsonb payload, checked without conversion.
//! - [`append`]: the events trigger (on every protected log) and the append
//!   functions.
//! - [`batch`]: `append_suspension_events`, a suspension's creations in one
//!   call, its run locked once.
//! - [`attach`]: protecting an existing table in place (`sql/attach.sql`).
//! - [`audit`]: the replay auditor, pure Rust, on the same state machine.
//! - [`replay`]: `replay` and `scan`, streaming a stored log into the auditor.
//! - [`log_scan`]: the own log read straight from its primary key, for replay.
//! - [`log_shape`]: the columns a log or source must have, and their types.
//! - [`owner`]: work done as a table's owner (attach, the bootstrap ledger).
//! - [`creation_probe`]: a stored creation found straight in the creation
//!   index, for `append_suspension_event`'s duplicate calls.
//! - [`fanin`]: the exactly-once join barrier.
//! - [`retention`]: removing whole finished runs.
//! - [`metrics`]: the write path's counters (shared memory, when preloaded)
//!   and what `metrics()` / `stuck_runs()` (`sql/monitoring.sql`) need.
//! - [`bootstrap`]: run a migration once per database, race-free: DDL text,
//!   or any migrator between `bootstrap_begin` and `bootstrap_end`.
//! - [`plans`]: SPI plans kept for the life of the backend.
//! - [`subxact`]: run work in a subtransaction and catch its error.
//! - `testing`: the tests' shared generator and refusal names.
//!
//! SQL objects live in `sql/`: `schema.sql` runs first (types, tables,
//! indexes), then `functions.sql` (signatures), `attach.sql` (attach,
//! detach, the DDL watcher), `monitoring.sql` (metrics, stuck_runs),
//! `access.sql` (grant_access), `finalize.sql` last (triggers, privileges).
//! Released install scripts and upgrade scripts are kept there too
//! (`workflow_ext--<old>.sql`, `workflow_ext--<old>--<new>.sql`).

use pgrx::prelude::*;

pub mod append;
pub mod attach;
pub mod audit;
pub mod batch;
pub mod bootstrap;
pub mod creation_probe;
pub mod errors;
pub mod event_id;
pub mod fanin;
pub mod lifecycle;
pub mod log_scan;
pub mod log_shape;
pub mod metrics;
pub mod owner;
pub mod payload;
pub mod plans;
pub mod replay;
pub mod retention;
pub mod subxact;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
pub mod validate;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/functions.sql",
    name = "functions",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/attach.sql",
    name = "attach",
    requires = ["functions"]
);
extension_sql_file!(
    "../sql/monitoring.sql",
    name = "monitoring",
    requires = ["attach"]
);
extension_sql_file!(
    "../sql/access.sql",
    name = "access",
    requires = ["monitoring"]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // A Rust backtrace in an error's DETAIL would show clients the server's
    // internals: never capture one, whatever the server's environment says.
    // SAFETY: _PG_init runs before this process starts any thread.
    unsafe {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    payload::register_gucs();
    metrics::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
