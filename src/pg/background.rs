//! Statements PostgreSQL runs only at the top level (`CREATE INDEX
//! CONCURRENTLY`, `DROP INDEX CONCURRENTLY`), for a procedure that cannot
//! issue them itself: a dynamic background worker connects to the caller's
//! database as the caller and runs one, as a client's simple query would.
//!
//! Which statement is never passed in: the worker is told a log and a step
//! and asks `workflow_ext.attach_statement(log, step, true)` for the text,
//! the one source the blocking attach builds its indexes from too.
//!
//! The caller keeps a ticket per worker (a handle in backend memory) and
//! polls it between its own COMMITs: a concurrent index build waits for
//! every transaction older than its snapshots to end, the caller's too, so
//! the caller must not wait inside one transaction.

use crate::errors::{internal, raise, WfError};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

thread_local! {
    /// Tickets of this backend's workers: handles allocated in
    /// TopMemoryContext, so they outlive the transaction that started them.
    static WORKERS: RefCell<(i32, HashMap<i32, *mut pg_sys::BackgroundWorkerHandle>)> =
        RefCell::new((0, HashMap::new()));
}

/// Starts a worker that runs `log`'s `step` at the top level, as the
/// current user in the current database; returns its ticket.
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn start_top_level(log: pg_sys::Oid, step: &str) -> i32 {
    if step.len() > 90 || step.contains(' ') {
        internal!("step \"{step}\" does not fit a worker's extra data");
    }
    // SAFETY: plain reads of the backend's globals.
    let (db, user, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId(), pg_sys::MyProcPid) };
    let extra = format!("{} {} {} {step}", db.to_u32(), user.to_u32(), log.to_u32());
    let builder = BackgroundWorkerBuilder::new("workflow_ext attach")
        .set_type("workflow_ext attach")
        .set_library("workflow_ext")
        .set_function("workflow_ext_top_level_worker")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_extra(&extra)
        .set_notify_pid(pid);
    let mut worker = pg_sys::BackgroundWorker::from(&builder);
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: the handle is palloc'd in the current context: the top one,
    // so that it outlives this transaction.
    let started = unsafe {
        PgMemoryContexts::TopMemoryContext
            .switch_to(|_| pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle))
    };
    if !started || handle.is_null() {
        raise!(WfError::NoBackgroundWorker)
    }
    WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        w.0 = w.0.checked_add(1).unwrap_or(1);
        let ticket = w.0;
        w.1.insert(ticket, handle);
        ticket
    })
}

/// Whether ticket's worker has stopped (then the ticket is forgotten); an
/// unknown ticket has.
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn top_level_finished(ticket: i32) -> bool {
    let Some(handle) = WORKERS.with(|w| w.borrow().1.get(&ticket).copied()) else {
        return true;
    };
    let mut pid = 0;
    // SAFETY: a handle registered by this backend, kept in TopMemoryContext.
    let status = unsafe { pg_sys::GetBackgroundWorkerPid(handle, &mut pid) };
    let stopped = matches!(
        status,
        pg_sys::BgwHandleStatus::BGWH_STOPPED | pg_sys::BgwHandleStatus::BGWH_POSTMASTER_DIED
    );
    if stopped {
        WORKERS.with(|w| w.borrow_mut().1.remove(&ticket));
        // SAFETY: the handle was palloc'd in TopMemoryContext and is no
        // longer referenced.
        unsafe { pg_sys::pfree(handle.cast()) };
    }
    stopped
}

/// Asks ticket's worker to stop (a cancelled attach); it is still polled
/// with [`top_level_finished`].
#[pg_extern(sql = false)] // declared in sql/attach.sql
fn stop_top_level(ticket: i32) {
    if let Some(handle) = WORKERS.with(|w| w.borrow().1.get(&ticket).copied()) {
        // SAFETY: a handle registered by this backend.
        unsafe { pg_sys::TerminateBackgroundWorker(handle) };
    }
}

/// The worker's main function: connect, read the statement, run it at the
/// top level. An error ends the worker (and is in the server log); the
/// caller sees the result in the catalog (an index missing or invalid).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn workflow_ext_top_level_worker(_arg: pg_sys::Datum) {
    // SAFETY: called once, at the worker's start. SIGTERM (the caller
    // stopping it) is taken at the next interrupt check, as in a client
    // backend (die), never inside the signal handler: bgworker_die, the
    // default, would exit holding whatever lock the build held. SIGINT
    // cancels the statement.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(on_sigterm));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let extra = BackgroundWorker::get_extra();
    let mut parts = extra.split(' ');
    let mut oid = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .map(pg_sys::Oid::from)
            .unwrap_or_else(|| internal!("bad worker data \"{extra}\""))
    };
    let (db, user, log) = (oid(), oid(), oid());
    let step = extra.splitn(4, ' ').nth(3).unwrap_or_default().to_owned();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), Some(user));
    let statement = BackgroundWorker::transaction(move || {
        Spi::get_one_with_args::<String>(
            "SELECT workflow_ext.attach_statement($1::pg_catalog.regclass, $2, true)",
            &[log.into(), step.as_str().into()],
        )
    });
    let statement = match statement {
        Ok(Some(s)) => s,
        _ => internal!("no statement for the worker's step"),
    };
    let statement =
        CString::new(statement).unwrap_or_else(|_| internal!("statement with a NUL byte"));
    // SAFETY: a connected worker outside any transaction.
    unsafe { run_top_level(&statement) };
}

/// SIGTERM, as PostgreSQL's `die` marks it: the worker ends at its next
/// interrupt check, releasing its locks on the way out.
unsafe extern "C-unwind" fn on_sigterm(_signal: std::ffi::c_int) {
    // SAFETY: what die() does: flags read at CHECK_FOR_INTERRUPTS, and the
    // latch, whose setting is safe in a signal handler.
    unsafe {
        pg_sys::InterruptPending = 1;
        pg_sys::ProcDiePending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// Runs one utility statement as a client's simple query would: its own
/// transaction, context PROCESS_UTILITY_TOPLEVEL (so CONCURRENTLY is
/// allowed), a snapshot pushed for it, its trees in a context that outlives
/// the transaction.
///
/// # Safety
/// Outside any transaction, in a backend connected to a database.
unsafe fn run_top_level(sql: &std::ffi::CStr) {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        // The trees must outlive the transactions a concurrent build
        // commits on its way (a client's live in MessageContext); the
        // worker ends after this statement.
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let parsed = pg_sys::pg_parse_query(sql.as_ptr());
        if parsed.is_null() || (*parsed).length != 1 {
            internal!("the worker's statement is not one statement");
        }
        let raw = pg_sys::list_nth(parsed, 0).cast::<pg_sys::RawStmt>();
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            raw,
            sql.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        let planned = pg_sys::pg_plan_queries(
            queries,
            sql.as_ptr(),
            pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
            std::ptr::null_mut(),
        );
        // Through an unnamed portal, as exec_simple_query does: the portal
        // takes the snapshot, and SPI in the event triggers the statement
        // fires (the DDL watcher) needs an active portal.
        let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
        (*portal).visible = false;
        pg_sys::PortalDefineQuery(
            portal,
            std::ptr::null(),
            sql.as_ptr(),
            pg_sys::CreateCommandTag((*raw).stmt),
            planned,
            std::ptr::null_mut(),
        );
        pg_sys::PortalStart(portal, std::ptr::null_mut(), 0, std::ptr::null_mut());
        let mut done: pg_sys::QueryCompletion = std::mem::zeroed();
        #[cfg(not(feature = "pg18"))]
        pg_sys::PortalRun(
            portal,
            std::ffi::c_long::MAX,
            true,
            true,
            pg_sys::None_Receiver,
            pg_sys::None_Receiver,
            &mut done,
        );
        #[cfg(feature = "pg18")]
        pg_sys::PortalRun(
            portal,
            std::ffi::c_long::MAX,
            true,
            pg_sys::None_Receiver,
            pg_sys::None_Receiver,
            &mut done,
        );
        pg_sys::PortalDrop(portal, false);
        pg_sys::CommitTransactionCommand();
    }
}
