//! workflow_ext: workflow event-log invariants enforced inside PostgreSQL.
//!
//! Table of contents. The layers, bottom up; each uses only the layers
//! listed before it:
//! - [`rules`] and [`errors`]: pure Rust, no SPI. The rules are the
//!   lifecycle, the argument rules, one fold of a run's events, event ids;
//!   the errors are every user-visible error, each declared once with its
//!   SQLSTATE, DETAIL and HINT (an error names the lifecycle's violation,
//!   and the argument rules return errors).
//! - [`pg`]: the backend: unsafe FFI (payload datums, tuple descriptors,
//!   index scans), SPI plans, subtransactions, work as a table's owner.
//! - [`write`]: the write path: one core (lock, decide, number) that the
//!   trigger, the single append and the batch append share.
//! - [`audit`]: `replay` and `scan`, reading a stored log back into the
//!   rules.
//! - [`features`]: attach, the join barrier, retention, monitoring,
//!   bootstrap: one file each.
//! - `testing`: the tests' shared generator and refusal names.
//!
//! SQL objects live in `sql/`: `schema.sql` runs first (types, tables,
//! indexes), then `functions.sql` (signatures), `attach.sql` (attach,
//! detach, the DDL watcher), `monitoring.sql` (metrics, stuck_runs),
//! `access.sql` (grant_access), `citus.sql` (distribute), `finalize.sql` last (triggers, privileges).
//! Released install scripts and upgrade scripts are kept there too
//! (`workflow_ext--<old>.sql`, `workflow_ext--<old>--<new>.sql`).

use pgrx::prelude::*;

pub mod audit;
pub mod errors;
pub mod features;
pub mod pg;
pub mod rules;
#[cfg(any(test, feature = "pg_test"))]
mod testing;
pub mod write;

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
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["access"]);
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
    pg::payload::register_gucs();
    pg::counters::init();
    write::run_cache::register();
    pg::row_origin::register(pg::row_origin::OnConflictEnd {
        ended: write::skipped::statement_ended,
        failed: write::skipped::statement_failed,
    });
    pg::plans::register_invalidation();
    pg::citus::register_error_hook();
    pg::citus::register_transaction_edges();
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
