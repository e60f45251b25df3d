//! Whether the row a trigger fires for is a row of a `COPY … FROM` itself.
//!
//! Every row a COPY's BEFORE ROW trigger accepts is then stored, or the
//! whole statement fails: a COPY has no `ON CONFLICT` that could skip the
//! row afterwards, and a log has no trigger of its owner's that could
//! return NULL after ours (`check_log`). So for the length of one COPY the
//! write path may keep what it decided of an entity instead of reading it
//! back from the log for the next row ([`crate::write::run_cache`]).
//!
//! Two hooks tell such a row from any other: `ProcessUtility` marks the
//! COPY FROM while it runs (with its target and a number of its own), and
//! `ExecutorRun`/`ExecutorFinish` count the executors running in this
//! backend. A COPY inserts its rows with no executor of its own, so its
//! rows are the ones that fire at the executor depth the COPY began at;
//! anything a default, a trigger or a function inserts meanwhile runs in
//! an executor one level deeper, and is not a COPY row. Both marks are put
//! back when the statement ends, by error too.
//!
//! Every statement of the backend passes these hooks, so they call
//! PostgreSQL as C does: through functions declared here, not pgrx's
//! wrappers (which would turn an error into a Rust panic and raise it again
//! without its constraint name and CONTEXT), with the marks put back by a
//! `PG_TRY`/`PG_FINALLY` of their own ([`try_finally`]).
//! A backend that loads the library during a COPY (its first trigger call)
//! did not see that COPY begin: nothing is kept for it.

use pgrx::pg_sys;
use std::cell::Cell;

/// One COPY FROM in progress.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Copying {
    /// The relation the COPY's target named when it began (InvalidOid: none).
    target: pg_sys::Oid,
    /// Executors running when it began.
    depth: u32,
    /// This backend's number for it: what was kept for another COPY is not
    /// this one's.
    pub(crate) number: u64,
}

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static COPYING: Cell<Option<Copying>> = const { Cell::new(None) };
    static NUMBER: Cell<u64> = const { Cell::new(0) };
}

/// The COPY FROM whose own row into `rel` this trigger call is for, if it
/// is one.
pub(crate) fn row_of_copy_into(rel: pg_sys::Oid) -> Option<Copying> {
    let c = COPYING.get()?;
    (c.target == rel && c.depth == DEPTH.get()).then_some(c)
}

/// PostgreSQL's functions as C calls them: an error longjmps past the
/// caller's frame to the next handler, with all its fields.
mod raw {
    use pgrx::pg_sys;

    unsafe extern "C-unwind" {
        pub(super) fn standard_ProcessUtility(
            pstmt: *mut pg_sys::PlannedStmt,
            query_string: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
        #[cfg(not(feature = "pg18"))]
        pub(super) fn standard_ExecutorRun(
            query_desc: *mut pg_sys::QueryDesc,
            direction: pg_sys::ScanDirection::Type,
            count: u64,
            execute_once: bool,
        );
        #[cfg(feature = "pg18")]
        pub(super) fn standard_ExecutorRun(
            query_desc: *mut pg_sys::QueryDesc,
            direction: pg_sys::ScanDirection::Type,
            count: u64,
        );
        pub(super) fn standard_ExecutorFinish(query_desc: *mut pg_sys::QueryDesc);
        pub(super) fn RangeVarGetRelidExtended(
            relation: *const pg_sys::RangeVar,
            lockmode: pg_sys::LOCKMODE,
            flags: u32,
            callback: pg_sys::RangeVarGetRelidCallback,
            callback_arg: *mut std::ffi::c_void,
        ) -> pg_sys::Oid;
        pub(super) fn pg_re_throw() -> !;
    }
}

/// `PG_TRY() { body } PG_FINALLY() { finally } PG_END_TRY()`: `finally`
/// runs whether `body` returns or raises an error, which then goes on to
/// the next handler unchanged, as `PG_RE_THROW()` sends it.
///
/// # Safety
/// `body` calls PostgreSQL only through [`raw`] and holds nothing that
/// needs dropping (an error abandons its frame); neither closure panics.
unsafe fn try_finally(body: impl FnOnce(), finally: impl FnOnce()) {
    unsafe {
        let saved_stack = pg_sys::PG_exception_stack;
        let saved_context = pg_sys::error_context_stack;
        let jumped = cee_scape::call_with_sigsetjmp(false, |buf| {
            pg_sys::PG_exception_stack = std::ptr::from_ref(buf).cast_mut().cast();
            body();
            0
        });
        pg_sys::PG_exception_stack = saved_stack;
        pg_sys::error_context_stack = saved_context;
        finally();
        if jumped != 0 {
            raw::pg_re_throw();
        }
    }
}

static mut PREVIOUS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREVIOUS_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREVIOUS_FINISH: pg_sys::ExecutorFinish_hook_type = None;

/// Installs the hooks (from `_PG_init`), after those loaded before us.
pub(crate) fn register() {
    // SAFETY: _PG_init runs once per backend, in its only thread, before
    // any statement of ours.
    unsafe {
        PREVIOUS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREVIOUS_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREVIOUS_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
    }
}

/// The target of a `COPY table FROM …`, by the name it gives (InvalidOid
/// when there is none by that name: the COPY will say so).
unsafe fn copy_from_target(pstmt: *mut pg_sys::PlannedStmt) -> Option<pg_sys::Oid> {
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_CopyStmt {
            return None;
        }
        let copy = stmt.cast::<pg_sys::CopyStmt>();
        if !(*copy).is_from || (*copy).relation.is_null() {
            return None;
        }
        // No lock: the COPY takes its own. Were the name to lead elsewhere
        // by then, no row of this log would fire at the COPY's depth.
        Some(raw::RangeVarGetRelidExtended(
            (*copy).relation,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the hook's arguments, passed on as they came; the closures
    // hold only those and Copy values.
    unsafe {
        let copying = copy_from_target(pstmt).map(|target| {
            let number = NUMBER.get().wrapping_add(1);
            NUMBER.set(number);
            Copying {
                target,
                depth: DEPTH.get(),
                number,
            }
        });
        // Any utility statement: what runs inside it is not the outer
        // COPY's row.
        let outer = COPYING.replace(copying);
        try_finally(
            || match PREVIOUS_UTILITY {
                Some(previous) => previous(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
                None => raw::standard_ProcessUtility(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
            },
            || COPYING.set(outer),
        );
    }
}

/// Runs `f` one executor level deeper.
///
/// # Safety
/// As for [`try_finally`]'s `body`.
unsafe fn deeper(f: impl FnOnce()) {
    let depth = DEPTH.get();
    DEPTH.set(depth.saturating_add(1));
    // SAFETY: the caller's promise.
    unsafe { try_finally(f, || DEPTH.set(depth)) };
}

#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the hook's arguments, passed on as they came.
    unsafe {
        deeper(|| match PREVIOUS_RUN {
            Some(previous) => previous(query_desc, direction, count, execute_once),
            None => raw::standard_ExecutorRun(query_desc, direction, count, execute_once),
        });
    }
}

#[cfg(feature = "pg18")]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: the hook's arguments, passed on as they came.
    unsafe {
        deeper(|| match PREVIOUS_RUN {
            Some(previous) => previous(query_desc, direction, count),
            None => raw::standard_ExecutorRun(query_desc, direction, count),
        });
    }
}

/// ExecutorFinish runs AFTER triggers and the rest of data-modifying CTEs:
/// their rows are a statement's too.
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: the hook's argument, passed on as it came.
    unsafe {
        deeper(|| match PREVIOUS_FINISH {
            Some(previous) => previous(query_desc),
            None => raw::standard_ExecutorFinish(query_desc),
        });
    }
}
