//! Race-free schema bootstrap: run a named migration at most once per
//! database, whatever number of processes call at the same instant
//! (the failure this was built for: concurrent `CREATE SCHEMA IF NOT
//! EXISTS` failing on `pg_namespace_nspname_index`). Two shapes share one ledger and one
//! implementation of "the lock, the re-check, the catalog refresh"
//! ([`lock_and_read_ledger`]):
//!
//! - `bootstrap(name, ddl)` runs DDL text in the caller's transaction, under
//!   a transaction-scoped lock;
//! - `bootstrap_begin(name)` / `bootstrap_end(name)` wrap any migrator (one
//!   that runs its own transactions on its own connections) under a
//!   session-scoped lock held by the calling connection.
//!
//! 1. Serialize callers of the same name on the advisory lock in the two-int4
//!    key space `(LOCK_CLASS, hashtext(name))`, at transaction or session
//!    scope; the two scopes exclude each other across sessions, and the key
//!    space cannot meet an application's bigint-keyed locks.
//! 2. After the lock, process catalog invalidations: advisory locks, unlike
//!    relation locks, do not, so a caller that looked the schema up before
//!    waiting would otherwise act on a stale "not found".
//! 3. Consult the ledger (`workflow_ext.bootstraps`) in a fresh snapshot:
//!    applied (with the same checksum, when both are known) → false; with
//!    another → error.
//! 4. `bootstrap`: run the DDL as the caller (so it needs the caller's own
//!    rights) in a subtransaction. A clash with DDL from a process that does
//!    not use this function (23505, 42P06, 42P07, 42710) is retried after
//!    refreshing the catalog; on the retry `IF NOT EXISTS` sees the object.
//!    Any other error, or a clash that persists, is raised: the whole call
//!    rolls back and no ledger row is written.
//! 5. Record name, checksum, DDL (when there is one), time and caller.
//!    `bootstrap_end` then hands its session lock to a transaction-scoped
//!    hold of the same key before releasing it, so no waiter can get the
//!    lock before the ledger row is committed.

use crate::errors::{internal, or_internal, or_raise, raise, WfError, WfResult};
use crate::pg::transaction::{in_subtransaction, uses_transaction_snapshot};
use crate::rules::validate;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;
use pgrx::spi::{SpiError, SpiErrorCodes};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;

/// First half of the advisory lock key: "WFXB".
pub const LOCK_CLASS: i32 = 0x5746_5842;
/// Attempts at the DDL when it clashes with someone else's concurrent DDL.
const CLASH_RETRIES: usize = 5;

thread_local! {
    /// Bootstraps this session has begun and not ended: name → the checksum
    /// given to `bootstrap_begin`. Each holds the name's session lock.
    static BEGUN: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
}

fn checksum(ddl: &str) -> String {
    Sha256::digest(ddl.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let ledger = or_internal!(
        Spi::get_one::<pg_sys::Oid>(
            "SELECT 'workflow_ext.bootstraps'::pg_catalog.regclass::pg_catalog.oid"
        ),
        "bootstrap ledger"
    )
    .unwrap_or_else(|| internal!("bootstrap ledger not found"));
    let owner = crate::pg::owner::owner_of(ledger)
        .unwrap_or_else(|| internal!("bootstrap ledger not found"));
    crate::pg::owner::as_role(owner, f)
}

/// The advisory lock a bootstrap name is serialized on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Released at the end of the transaction (`bootstrap`).
    Transaction,
    /// Held by the connection until `bootstrap_end` or disconnect.
    Session,
}

/// What the ledger says of a name: `None` if never applied, else the
/// checksum it was applied with (if one was given).
type Applied = Option<Option<String>>;

fn read_ledger(name: &str) -> Applied {
    // One row at most (name is the primary key); a missing row is None.
    let row = as_ledger_owner(|| {
        Spi::connect(|c| {
            let rows = or_internal!(
                c.select(
                    "SELECT checksum FROM workflow_ext.bootstraps WHERE name OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[name.into()],
                ),
                "read bootstrap ledger"
            );
            if rows.is_empty() {
                None
            } else {
                Some(or_internal!(
                    rows.first().get::<String>(1),
                    "ledger checksum"
                ))
            }
        })
    });
    row
}

/// Steps 1–3 of the module doc: wait for the name's lock (bounded by the
/// caller's lock_timeout / statement_timeout, which keep their SQLSTATEs but
/// name the bootstrap), refresh the catalog cache, read the ledger. The read
/// after the lock must see what the session we waited for committed, so it
/// needs a snapshot taken after the wait: READ COMMITTED only (see
/// [`require_read_committed`]).
fn lock_and_read_ledger(name: &str, scope: Scope) -> Applied {
    let sql = match scope {
        Scope::Transaction => {
            "SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))"
        }
        Scope::Session => "SELECT pg_catalog.pg_advisory_lock($1, pg_catalog.hashtext($2))",
    };
    let waited = PgTryBuilder::new(|| {
        Spi::run_with_args(sql, &[LOCK_CLASS.into(), name.into()]).map_err(|e| e.to_string())
    })
    .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| {
        Err("lock_timeout".into())
    })
    .catch_when(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, |_| {
        Err("statement_timeout".into())
    })
    .execute();
    match waited {
        Ok(()) => {}
        Err(which) if which == "lock_timeout" => {
            raise!(WfError::BootstrapWaitTimedOut {
                name: name.to_string(),
                which: "lock_timeout"
            })
        }
        Err(which) if which == "statement_timeout" => {
            raise!(WfError::BootstrapWaitTimedOut {
                name: name.to_string(),
                which: "statement_timeout"
            })
        }
        Err(other) => internal!("bootstrap lock: {other}"),
    }
    // SAFETY: always valid inside a transaction; see module doc, step 2.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    read_ledger(name)
}

/// Under REPEATABLE READ / SERIALIZABLE the transaction's snapshot predates
/// the lock wait, so the ledger read after it could miss the row of the
/// session waited for: refused up front, whatever the ledger says.
fn require_read_committed(name: &str) {
    if uses_transaction_snapshot() {
        raise!(WfError::BootstrapNeedsReadCommitted {
            name: name.to_string()
        });
    }
}

fn unlock_session(name: &str) {
    or_internal!(
        Spi::run_with_args(
            "SELECT pg_catalog.pg_advisory_unlock($1, pg_catalog.hashtext($2))",
            &[LOCK_CLASS.into(), name.into()],
        ),
        "release bootstrap lock"
    );
}

/// Step 3's verdict: true if `name` is applied already (nothing to do),
/// false if the caller must apply it; an error if it was applied with
/// another checksum (compared when both are known).
fn already_applied(name: &str, applied: &Applied, given: Option<&str>) -> WfResult<bool> {
    match (applied, given) {
        (None, _) => Ok(false),
        (Some(Some(recorded)), Some(given)) if recorded != given => {
            Err(WfError::BootstrapChecksumChanged {
                name: name.to_string(),
                applied: recorded.clone(),
                given: given.to_string(),
            })
        }
        (Some(_), _) => Ok(true),
    }
}

fn record(name: &str, checksum: Option<&str>, ddl: Option<&str>) {
    let caller = or_internal!(
        Spi::get_one::<String>("SELECT pg_catalog.session_user()::text"),
        "session user"
    )
    .unwrap_or_else(|| internal!("no session user"));
    or_internal!(
        as_ledger_owner(|| {
            Spi::run_with_args(
                "INSERT INTO workflow_ext.bootstraps (name, checksum, ddl, applied_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    name.into(),
                    checksum.into(),
                    ddl.into(),
                    caller.as_str().into(),
                ],
            )
        }),
        "write bootstrap ledger"
    );
}

/// Runs the caller's DDL text. SPI refuses transaction control and COPY
/// with a bare code; they are the caller's mistakes, so they get their own
/// documented errors.
fn run_ddl(name: &str, ddl: &str) {
    match Spi::run(ddl) {
        Ok(()) => {}
        Err(SpiError::SpiError(SpiErrorCodes::Transaction)) => {
            raise!(WfError::BootstrapTransactionControl {
                name: name.to_string()
            })
        }
        Err(SpiError::SpiError(SpiErrorCodes::Copy)) => raise!(WfError::BootstrapCopy {
            name: name.to_string()
        }),
        Err(e) => internal!("bootstrap DDL: {e}"),
    }
}

/// Runs `ddl` at most once per database under `name`: true for the call that
/// applied it, false for every other.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn bootstrap(name: Option<&str>, ddl: Option<&str>) -> bool {
    let name = or_raise!(validate::ident("name", name));
    let Some(ddl) = ddl else {
        raise!(WfError::NullArgument { arg: "ddl" })
    };
    if ddl.trim().is_empty() {
        raise!(WfError::EmptyArgument { arg: "ddl" });
    }
    crate::pg::transaction::refuse_if_read_only(c"bootstrap");
    require_read_committed(name);
    let sum = checksum(ddl);
    let applied = lock_and_read_ledger(name, Scope::Transaction);
    if or_raise!(already_applied(name, &applied, Some(&sum))) {
        return false;
    }
    for attempt in 1..=CLASH_RETRIES {
        match in_subtransaction(|| run_ddl(name, ddl)) {
            Ok(()) => break,
            Err(e) if is_clash(&e) && attempt < CLASH_RETRIES => {
                // SAFETY: see module doc, step 4.
                unsafe { pg_sys::AcceptInvalidationMessages() };
            }
            Err(e) => (*e).rethrow(),
        }
    }
    record(name, Some(&sum), Some(ddl));
    true
}

/// Starts a migration run by any migrator: true means "migrate now, then
/// call bootstrap_end on this connection"; false means `name` is applied
/// already. Waits (bounded by `timeout`, else the caller's lock_timeout)
/// while another session has begun the same name.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn bootstrap_begin(name: Option<&str>, timeout: Option<Interval>, checksum: Option<&str>) -> bool {
    let name = or_raise!(validate::ident("name", name));
    let checksum = or_raise!(validate::optional_ident("checksum", checksum));
    crate::pg::transaction::refuse_if_read_only(c"bootstrap_begin");
    require_read_committed(name);
    if BEGUN.with(|b| b.borrow().contains_key(name)) {
        raise!(WfError::BootstrapAlreadyBegun {
            name: name.to_string()
        });
    }
    // Applied already: answer without waiting for anybody.
    if or_raise!(already_applied(name, &read_ledger(name), checksum)) {
        return false;
    }
    if let Some(t) = timeout {
        let ms = interval_ms(t.months(), t.days(), t.micros())
            .unwrap_or_else(|| raise!(WfError::InvalidTimeout));
        // Local to this transaction: the caller's own setting comes back at
        // its end.
        or_internal!(
            Spi::run_with_args(
                "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
                &[ms.to_string().into()]
            ),
            "set lock_timeout"
        );
    }
    let applied = lock_and_read_ledger(name, Scope::Session);
    match already_applied(name, &applied, checksum) {
        Ok(false) => {}
        Ok(true) => {
            unlock_session(name);
            return false;
        }
        Err(e) => {
            unlock_session(name);
            raise!(e)
        }
    }
    BEGUN.with(|b| {
        b.borrow_mut()
            .insert(name.to_string(), checksum.map(str::to_string))
    });
    true
}

/// A timeout as whole milliseconds ≥ 1, or None if not positive or too
/// large for lock_timeout.
/// (A month counts 30 days, as in PostgreSQL's interval arithmetic.)
fn interval_ms(months: i32, days: i32, micros: i64) -> Option<i32> {
    let days = i64::from(months)
        .checked_mul(30)?
        .checked_add(i64::from(days))?;
    let micros = days.checked_mul(86_400_000_000)?.checked_add(micros)?;
    let ms = micros.checked_add(999)? / 1000;
    i32::try_from(ms).ok().filter(|ms| *ms >= 1)
}

/// Ends the migration this connection began: records the ledger row and
/// releases the lock once the ledger row is committed.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn bootstrap_end(name: Option<&str>) {
    let name = or_raise!(validate::ident("name", name));
    crate::pg::transaction::refuse_if_read_only(c"bootstrap_end");
    let Some(checksum) = BEGUN.with(|b| b.borrow().get(name).cloned()) else {
        raise!(WfError::BootstrapNotBegun {
            name: name.to_string()
        })
    };
    // Hold the key at transaction scope too, so waiters stay blocked until
    // the ledger row below is committed (module doc, step 5).
    or_internal!(
        Spi::run_with_args(
            "SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))",
            &[LOCK_CLASS.into(), name.into()],
        ),
        "hold bootstrap lock"
    );
    record(name, checksum.as_deref(), None);
    unlock_session(name);
    BEGUN.with(|b| b.borrow_mut().remove(name));
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn boot(name: &str, ddl: &str) -> bool {
        Spi::get_one_with_args::<bool>(
            "SELECT workflow_ext.bootstrap($1, $2)",
            &[name.into(), ddl.into()],
        )
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
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM gw.migrations"),
            Ok(Some(0))
        );
    }

    #[pg_test(error = "bootstrap \"gw@v1\" was applied with a different checksum")]
    fn a_changed_ddl_under_the_same_name_is_an_error() {
        boot("gw@v1", "CREATE SCHEMA IF NOT EXISTS gw");
        boot("gw@v1", "CREATE SCHEMA IF NOT EXISTS gw2");
    }

    /// A real error is raised, not mistaken for a clash (rollback and retry
    /// after a failure are shown in tests/pg_regress/sql/bootstrap.sql).
    #[pg_test(error = "relation \"t1\" already exists")]
    fn a_failing_ddl_raises_its_own_error() {
        boot(
            "broken@v1",
            "CREATE TABLE t1 (a int); CREATE TABLE t1 (a int)",
        );
    }

    #[pg_test]
    fn a_clash_with_an_object_made_outside_is_retried_then_raised() {
        Spi::run("CREATE TABLE clash_t (a int)").unwrap();
        // IF NOT EXISTS: the existing table is fine.
        assert!(boot(
            "clash@v1",
            "CREATE TABLE IF NOT EXISTS clash_t (a int)"
        ));
    }

    #[pg_test(error = "bootstrap \"tx@v1\" contains transaction control")]
    fn transaction_control_in_ddl_is_refused() {
        boot("tx@v1", "BEGIN; CREATE TABLE tx_t (a int); COMMIT;");
    }

    #[pg_test(error = "bootstrap \"copy@v1\" contains COPY to or from the client")]
    fn copy_in_ddl_is_refused() {
        boot("copy@v1", "COPY (SELECT 1) TO STDOUT");
    }

    fn begin(name: &str) -> bool {
        Spi::get_one_with_args::<bool>("SELECT workflow_ext.bootstrap_begin($1)", &[name.into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn begin_end_records_once_and_then_answers_false() {
        assert!(begin("mig@v1"));
        Spi::run("SELECT workflow_ext.bootstrap_end('mig@v1')").unwrap();
        assert!(!begin("mig@v1"));
        let row = Spi::get_one::<bool>(
            "SELECT ddl IS NULL AND checksum IS NULL FROM workflow_ext.bootstraps WHERE name = 'mig@v1'",
        );
        assert_eq!(row, Ok(Some(true)));
        // The session lock was handed back: nothing of ours is held at session level.
        let held = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND classid::int = 1464227906 AND mode = 'ExclusiveLock' AND NOT fastpath AND granted \
             AND virtualtransaction IS NULL",
        );
        assert_eq!(held, Ok(Some(0)));
    }

    #[pg_test(error = "bootstrap \"mig@v1\" is already begun in this session")]
    fn begin_twice_is_an_error() {
        begin("mig@v1");
        begin("mig@v1");
    }

    #[pg_test(error = "bootstrap \"mig@v1\" was not begun in this session")]
    fn end_without_begin_is_an_error() {
        Spi::run("SELECT workflow_ext.bootstrap_end('mig@v1')").unwrap();
    }

    #[pg_test(error = "bootstrap \"mig@v1\" was applied with a different checksum")]
    fn begin_with_another_checksum_is_an_error() {
        Spi::run("SELECT workflow_ext.bootstrap_begin('mig@v1', checksum => 'a')").unwrap();
        Spi::run("SELECT workflow_ext.bootstrap_end('mig@v1')").unwrap();
        Spi::run("SELECT workflow_ext.bootstrap_begin('mig@v1', checksum => 'b')").unwrap();
    }
}

#[cfg(test)]
mod unit {
    use super::interval_ms;

    #[test]
    fn timeouts_convert_to_milliseconds_without_overflow() {
        assert_eq!(interval_ms(0, 0, 1_500), Some(2));
        assert_eq!(interval_ms(0, 1, 0), Some(86_400_000));
        assert_eq!(interval_ms(0, 0, 0), None);
        assert_eq!(interval_ms(0, 0, -5), None);
        assert_eq!(interval_ms(i32::MAX, 0, 0), None);
        assert_eq!(interval_ms(0, 0, i64::MAX), None);
    }
}
