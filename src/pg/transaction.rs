//! Transaction helpers: running a piece of work in a subtransaction, so that
//! its error can be inspected instead of aborting the caller's transaction;
//! asking which kind of snapshot the transaction uses; refusing a write in a
//! read-only transaction; being told of the transaction's edges
//! ([`on_transaction_edges`]).

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

/// What backend memory tied to a transaction does at its edges.
pub struct TransactionEdges {
    /// Just before the commit, while statements may still run; an error
    /// here aborts the transaction.
    pub before_commit: fn(),
    /// The same before PREPARE TRANSACTION.
    pub before_prepare: fn(),
    /// After the commit, the PREPARE or the rollback: cleanup only, must
    /// not fail.
    pub ended: fn(),
    /// A subtransaction (and its committed children) rolled back.
    pub subtransaction_aborted: fn(pg_sys::SubTransactionId),
}

/// Registers `edges` for every transaction of this backend (from
/// `_PG_init`, once per caller: each registration is called).
pub fn on_transaction_edges(edges: &'static TransactionEdges) {
    let arg = std::ptr::from_ref(edges)
        .cast_mut()
        .cast::<std::ffi::c_void>();
    // SAFETY: registers plain functions for the life of the process, with a
    // pointer to a static they only read.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_edge), arg);
        pg_sys::RegisterSubXactCallback(Some(subxact_edge), arg);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_edge(event: pg_sys::XactEvent::Type, arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    // SAFETY: `arg` is the &'static TransactionEdges registered above.
    let edges = unsafe { &*arg.cast::<TransactionEdges>() };
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            // The statement that commits (COMMIT, or the last statement of
            // an implicit transaction) has released its snapshot; SPI needs
            // one. On an error the abort drops it with the rest.
            // SAFETY: a snapshot pushed here is popped right after.
            let pushed = unsafe { !pg_sys::ActiveSnapshotSet() };
            if pushed {
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            }
            if event == XACT_EVENT_PRE_COMMIT {
                (edges.before_commit)();
            } else {
                (edges.before_prepare)();
            }
            if pushed {
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => (edges.ended)(),
        _ => {}
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_edge(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // SAFETY: `arg` is the &'static TransactionEdges registered above.
        let edges = unsafe { &*arg.cast::<TransactionEdges>() };
        (edges.subtransaction_aborted)(subxact);
    }
}

/// Whether the caller runs inside a transaction block (BEGIN … COMMIT),
/// where a procedure cannot commit between its steps.
#[pgrx::pg_extern(sql = false)] // declared in sql/attach.sql
fn in_transaction_block() -> bool {
    // SAFETY: reads the transaction state.
    unsafe { pg_sys::IsTransactionBlock() }
}

/// Holds off query cancels and terminations from the end of one step of
/// `attach_concurrently` to the start of the next, across the COMMIT and
/// the entry into the next step's exception block, where PL/pgSQL cannot
/// catch them: a cancel that lands there is taken at the next step's first
/// statement instead, where the procedure undoes the attach. An ERROR
/// resets the hold-off (elog.c), so none can leak.
#[pgrx::pg_extern(sql = false)] // declared in sql/attach.sql
fn hold_interrupts() {
    // SAFETY: the backend's own counter, as HOLD_INTERRUPTS() does.
    unsafe { pg_sys::InterruptHoldoffCount += 1 }
}

/// Ends [`hold_interrupts`]; a pending cancel is taken at the next check.
#[pgrx::pg_extern(sql = false)] // declared in sql/attach.sql
fn resume_interrupts() {
    // SAFETY: as RESUME_INTERRUPTS(), never below zero.
    unsafe { pg_sys::InterruptHoldoffCount = pg_sys::InterruptHoldoffCount.saturating_sub(1) }
}
