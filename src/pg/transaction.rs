//! Transaction helpers: running a piece of work in a subtransaction, so that
//! its error can be inspected instead of aborting the caller's transaction;
//! asking which kind of snapshot the transaction uses; refusing a write in a
//! read-only transaction.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::{self, PgTryBuilder};

/// Runs `f` in a subtransaction; an error rolls the subtransaction back and
/// is returned instead of aborting the caller's transaction.
pub fn in_subtransaction(
    f: impl FnOnce() + std::panic::UnwindSafe,
) -> Result<(), Box<CaughtError>> {
    // SAFETY: the BeginInternalSubTransaction / Release / RollbackAndRelease
    // protocol of PL/pgSQL's exception blocks, restoring the memory context
    // and resource owner afterwards as it does.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let result = PgTryBuilder::new(move || {
            f();
            Ok(())
        })
        .catch_others(|e| Err(Box::new(e)))
        .execute();
        match result {
            Ok(()) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

/// True under REPEATABLE READ and SERIALIZABLE (PostgreSQL's
/// IsolationUsesXactSnapshot): the transaction keeps one snapshot, taken at
/// its first statement.
pub fn uses_transaction_snapshot() -> bool {
    // SAFETY: a plain read of a backend-local global.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Refuses `what` in a read-only transaction (a hot standby, or
/// `default_transaction_read_only`) with PostgreSQL's own 25006, as a plain
/// INSERT is refused: the functions that write through SPI would otherwise
/// fail later with an internal error ("cannot assign TransactionIds during
/// recovery").
pub fn refuse_if_read_only(what: &std::ffi::CStr) {
    // SAFETY: raises an ERROR (through pgrx's guard) or returns.
    unsafe { pg_sys::PreventCommandIfReadOnly(what.as_ptr()) }
}
