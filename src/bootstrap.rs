//! Race-free schema bootstrap: run a named DDL script at most once per
//! database, whatever number of processes call at the same instant
//! (seed 001: concurrent `CREATE SCHEMA IF NOT EXISTS` failing on
//! `pg_namespace_nspname_index`).
//!
//! 1. Serialize callers of the same name on a transaction-scoped advisory
//!    lock in the two-int4 key space `(WFX_BOOTSTRAP_LOCK_CLASS,
//!    hashtext(name))`; it cannot meet an application's bigint-keyed locks.
//! 2. After the lock, process catalog invalidations: advisory locks, unlike
//!    relation locks, do not, so a caller that looked the schema up before
//!    waiting would otherwise act on a stale "not found".
//! 3. Consult the ledger (`workflow_ext.bootstraps`): applied with the same
//!    checksum → false; with another → error.
//! 4. Run the DDL as the caller (so it needs the caller's own rights) in a
//!    subtransaction. A clash with DDL from a process that does not use this
//!    function (23505, 42P06, 42P07, 42710) is retried after refreshing the
//!    catalog; on the retry `IF NOT EXISTS` sees the object. Any other
//!    error, or a clash that persists, is raised: the whole call rolls back
//!    and no ledger row is written.
//! 5. Record name, checksum, DDL, time and caller in the ledger.

use crate::append::internal;
use crate::errors::{OrRaise, WfError};
use crate::subxact::in_subtransaction;
use crate::validate;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};

/// First half of the advisory lock key: "WFXB".
pub const LOCK_CLASS: i32 = 0x5746_5842;
/// Attempts at the DDL when it clashes with someone else's concurrent DDL.
const CLASH_RETRIES: usize = 5;

fn checksum(ddl: &str) -> String {
    Sha256::digest(ddl.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// SQLSTATEs that mean "another session created this object meanwhile".
/// A 23505 counts whatever index it names: reading the constraint out of the
/// message would depend on lc_messages (pgrx does not pass the constraint
/// field on). Nothing is swallowed by this: a clash is retried, and one that
/// persists (a user table's real unique violation, say) is raised.
fn is_clash(e: &CaughtError) -> bool {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { .. } => return false,
    };
    matches!(
        report.sql_error_code(),
        PgSqlErrorCode::ERRCODE_DUPLICATE_SCHEMA
            | PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE
            | PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT
            | PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
    )
}

/// Runs `f` as the owner of the ledger (the extension's owner), with
/// SECURITY_RESTRICTED_OPERATION, then switches back, also on error. The
/// ledger is written only here, so a role cannot forge "already applied".
fn as_ledger_owner<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the user id and context saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class \
         WHERE oid OPERATOR(pg_catalog.=) 'workflow_ext.bootstraps'::pg_catalog.regclass",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| internal("bootstrap ledger not found"));
    let mut user = pg_sys::Oid::INVALID;
    let mut sec = 0;
    // SAFETY: plain reads/writes of the backend's current user id.
    let _restore = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
        Restore(user, sec)
    };
    f()
}

fn lock(name: &str) {
    // The wait is bounded by the caller's lock_timeout / statement_timeout;
    // say which bootstrap it was waiting for, keeping PostgreSQL's SQLSTATE.
    let waited = PgTryBuilder::new(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))",
            &[LOCK_CLASS.into(), name.into()],
        )
        .map_err(|e| e.to_string())
    })
    .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| Err("lock_timeout".into()))
    .catch_when(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, |_| Err("statement_timeout".into()))
    .execute();
    if let Err(which) = waited {
        WfError::BootstrapWaitTimedOut { name: name.to_string(), which }.raise();
    }
    // SAFETY: always valid inside a transaction; see module doc, step 2.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}

/// Runs `ddl` at most once per database under `name`: true for the call that
/// applied it, false for every other.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn bootstrap(name: Option<&str>, ddl: Option<&str>) -> bool {
    let name = validate::ident("name", name).or_raise();
    let ddl = ddl.ok_or(WfError::NullArgument { arg: "ddl" }).or_raise();
    if ddl.trim().is_empty() {
        WfError::EmptyArgument { arg: "ddl" }.raise();
    }
    let sum = checksum(ddl);
    lock(name);

    let applied = as_ledger_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT checksum FROM workflow_ext.bootstraps WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )
    })
    .unwrap_or(None);
    match applied {
        Some(s) if s == sum => return false,
        Some(s) => WfError::BootstrapDdlChanged { name: name.to_string(), applied: s, given: sum }.raise(),
        None => {}
    }

    for attempt in 1..=CLASH_RETRIES {
        match in_subtransaction(|| Spi::run(ddl).unwrap_or_else(|e| internal(&e.to_string()))) {
            Ok(()) => break,
            Err(e) if is_clash(&e) && attempt < CLASH_RETRIES => {
                // SAFETY: see module doc, step 4.
                unsafe { pg_sys::AcceptInvalidationMessages() };
            }
            Err(e) => e.rethrow(),
        }
    }

    let caller = Spi::get_one::<String>("SELECT pg_catalog.session_user()::text")
        .ok()
        .flatten()
        .unwrap_or_default();
    as_ledger_owner(|| {
        Spi::run_with_args(
            "INSERT INTO workflow_ext.bootstraps (name, checksum, ddl, applied_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[name.into(), sum.as_str().into(), ddl.into(), caller.as_str().into()],
        )
    })
    .unwrap_or_else(|e| internal(&format!("bootstrap ledger: {e}")));
    true
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn boot(name: &str, ddl: &str) -> bool {
        Spi::get_one_with_args::<bool>("SELECT workflow_ext.bootstrap($1, $2)", &[name.into(), ddl.into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn applies_once_and_records_the_ledger() {
        let ddl = "CREATE SCHEMA IF NOT EXISTS gw; CREATE TABLE IF NOT EXISTS gw.migrations (id int PRIMARY KEY)";
        assert!(boot("gw@v1", ddl));
        assert!(!boot("gw@v1", ddl));
        let row = Spi::get_one::<bool>(
            "SELECT checksum ~ '^[0-9a-f]{64}$' AND ddl LIKE 'CREATE SCHEMA%' FROM workflow_ext.bootstraps WHERE name = 'gw@v1'",
        );
        assert_eq!(row, Ok(Some(true)));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM gw.migrations"), Ok(Some(0)));
    }

    #[pg_test(error = "bootstrap \"gw@v1\" was applied with another DDL")]
    fn a_changed_ddl_under_the_same_name_is_an_error() {
        boot("gw@v1", "CREATE SCHEMA IF NOT EXISTS gw");
        boot("gw@v1", "CREATE SCHEMA IF NOT EXISTS gw2");
    }

    /// A real error is raised, not mistaken for a clash (rollback and retry
    /// after a failure are shown in tests/pg_regress/sql/bootstrap.sql).
    #[pg_test(error = "relation \"t1\" already exists")]
    fn a_failing_ddl_raises_its_own_error() {
        boot("broken@v1", "CREATE TABLE t1 (a int); CREATE TABLE t1 (a int)");
    }

    #[pg_test]
    fn a_clash_with_an_object_made_outside_is_retried_then_raised() {
        Spi::run("CREATE TABLE clash_t (a int)").unwrap();
        // IF NOT EXISTS: the existing table is fine.
        assert!(boot("clash@v1", "CREATE TABLE IF NOT EXISTS clash_t (a int)"));
    }
}
