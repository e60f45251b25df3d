//! Which statement the row a trigger fires for comes from: a `COPY … FROM`
//! itself, or an `INSERT … ON CONFLICT` that may still skip it.
//!
//! Every row a COPY's BEFORE ROW trigger accepts is then stored, or the
//! whole statement fails: a COPY has no `ON CONFLICT` that could skip the
//! row afterwards, and a log has no trigger of its owner's that could
//! return NULL after ours (`check_log`). So for the length of one COPY the
//! write path may keep what it decided of an entity instead of reading it
//! back from the log for the next row ([`crate::write::run_cache`]).
//!
//! An `INSERT … ON CONFLICT` is the one statement that can skip a row after
//! the trigger numbered it: PostgreSQL fires BEFORE ROW triggers first and
//! checks the arbiter indexes after. Such a statement is marked while it
//! runs, with its targets and arbiters, and when it ends the write path is
//! told, to check that the rows it numbered were stored
//! ([`crate::write::skipped`]).
//!
//! Three hooks tell such rows from any other: `ProcessUtility` marks the
//! COPY FROM while it runs (with its target and a number of its own),
//! `ExecutorRun` marks an `INSERT … ON CONFLICT`, and `ExecutorRun` and
//! `ExecutorFinish` count the executors running in this backend. A
//! statement's own rows fire one level below the depth it began at (a COPY
//! inserts its rows with no executor of its own: at its depth); anything a
//! default, a trigger or a function inserts meanwhile runs in an executor
//! one level deeper, and is not the statement's row. The marks are put back
//! when the statement ends, by error too.
//!
//! Every statement of the backend passes these hooks, so they call
//! PostgreSQL as C does: through functions declared here, not pgrx's
//! wrappers (which would turn an error into a Rust panic and raise it again
//! without its constraint name and CONTEXT), with the marks put back by a
//! `PG_TRY`/`PG_FINALLY` of their own ([`try_finally`]).
//! A backend that loads the library during a statement (its first trigger
//! call) did not see that statement begin: nothing is kept for a COPY, and
//! an `INSERT … ON CONFLICT` is treated as such from its next execution
//! (the write path's first call of a backend is never an ON CONFLICT's:
//! see [`crate::write::skipped`]).

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

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

/// The unique indexes an `INSERT … ON CONFLICT` checks after the BEFORE
/// ROW triggers: the ones its conflict target names, or every unique index
/// of the table (`ON CONFLICT DO NOTHING` with no target).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Arbiters {
    All,
    These(Vec<pg_sys::Oid>),
}

/// One `INSERT … ON CONFLICT` (or a statement with one in a WITH) running.
struct OnConflict {
    /// Its executor's query, to know it again when it finishes.
    query: *mut pg_sys::QueryDesc,
    /// The executor depth its rows fire at.
    depth: u32,
    /// Its ON CONFLICT targets and their arbiters.
    targets: Vec<(pg_sys::Oid, Arbiters)>,
}

/// What the write path is told when an `INSERT … ON CONFLICT` ends (the
/// executor depth its rows fired at): `ended` when it finished (it may
/// raise an error), `failed` when an error ended it (it must not).
#[derive(Clone, Copy)]
pub(crate) struct OnConflictEnd {
    pub ended: unsafe extern "C-unwind" fn(u32),
    pub failed: fn(u32),
}

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static COPYING: Cell<Option<Copying>> = const { Cell::new(None) };
    static NUMBER: Cell<u64> = const { Cell::new(0) };
    static ON_CONFLICT: RefCell<Vec<OnConflict>> = const { RefCell::new(Vec::new()) };
    static ON_CONFLICT_END: Cell<Option<OnConflictEnd>> = const { Cell::new(None) };
}

/// The COPY FROM whose own row into `rel` this trigger call is for, if it
/// is one.
pub(crate) fn row_of_copy_into(rel: pg_sys::Oid) -> Option<Copying> {
    let c = COPYING.get()?;
    (c.target == rel && c.depth == DEPTH.get()).then_some(c)
}

/// The arbiters of the `INSERT … ON CONFLICT` whose own row into `rel` this
/// trigger call is for, and the executor depth its rows fire at; None: the
/// row is not one an ON CONFLICT can skip.
pub(crate) fn on_conflict_into(rel: pg_sys::Oid) -> Option<(u32, Arbiters)> {
    let depth = DEPTH.get();
    ON_CONFLICT.with(|s| {
        let s = s.borrow();
        let statement = s.last().filter(|s| s.depth == depth)?;
        statement
            .targets
            .iter()
            .find(|(target, _)| *target == rel)
            .map(|(_, arbiters)| (depth, arbiters.clone()))
    })
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
/// runs whether `body` returns or raises an error (its argument: whether it
/// did), which then goes on to the next handler unchanged, as
/// `PG_RE_THROW()` sends it.
///
/// # Safety
/// `body` calls PostgreSQL only through [`raw`] or `#[pg_guard]` functions
/// and holds nothing that needs dropping (an error abandons its frame);
/// neither closure panics.
unsafe fn try_finally(body: impl FnOnce(), finally: impl FnOnce(bool)) {
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
        finally(jumped != 0);
        if jumped != 0 {
            raw::pg_re_throw();
        }
    }
}

static mut PREVIOUS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREVIOUS_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREVIOUS_FINISH: pg_sys::ExecutorFinish_hook_type = None;

/// Installs the hooks (from `_PG_init`), after those loaded before us;
/// `end` is told when an `INSERT … ON CONFLICT` ends.
pub(crate) fn register(end: OnConflictEnd) {
    ON_CONFLICT_END.set(Some(end));
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
            |_| COPYING.set(outer),
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
    unsafe { try_finally(f, |_| DEPTH.set(depth)) };
}

/// The elements of a `List` of integers, OIDs or pointers.
///
/// # Safety
/// `list` is NIL or a `List` whose cells hold what `get` reads.
unsafe fn list_cells<T>(list: *mut pg_sys::List, get: impl Fn(&pg_sys::ListCell) -> T) -> Vec<T> {
    if list.is_null() {
        return Vec::new();
    }
    unsafe {
        let len = usize::try_from((*list).length).unwrap_or(0);
        (0..len).map(|i| get(&*(*list).elements.add(i))).collect()
    }
}

/// The targets of the `INSERT … ON CONFLICT`s of a statement about to run
/// (its own, and those of data-modifying WITH queries), with their
/// arbiters; empty for any other statement. Reads the plan only.
///
/// # Safety
/// `query` is the executor's started query.
unsafe fn on_conflict_targets(query: *mut pg_sys::QueryDesc) -> Vec<(pg_sys::Oid, Arbiters)> {
    unsafe {
        let stmt = (*query).plannedstmt;
        if stmt.is_null()
            || ((*stmt).commandType != pg_sys::CmdType::CMD_INSERT && !(*stmt).hasModifyingCTE)
        {
            return Vec::new();
        }
        let mut plans = vec![(*stmt).planTree];
        plans.extend(list_cells((*stmt).subplans, |c| {
            c.ptr_value.cast::<pg_sys::Plan>()
        }));
        let rtable = list_cells((*stmt).rtable, |c| {
            c.ptr_value.cast::<pg_sys::RangeTblEntry>()
        });
        let mut targets = Vec::new();
        for plan in plans {
            if plan.is_null() || (*plan).type_ != pg_sys::NodeTag::T_ModifyTable {
                continue;
            }
            let modify = plan.cast::<pg_sys::ModifyTable>();
            if (*modify).operation != pg_sys::CmdType::CMD_INSERT
                || (*modify).onConflictAction == pg_sys::OnConflictAction::ONCONFLICT_NONE
            {
                continue;
            }
            let arbiters = match list_cells((*modify).arbiterIndexes, |c| c.oid_value) {
                named if !named.is_empty() => Arbiters::These(named),
                _ => Arbiters::All,
            };
            for index in list_cells((*modify).resultRelations, |c| c.int_value) {
                let entry = usize::try_from(index)
                    .ok()
                    .and_then(|i| rtable.get(i.checked_sub(1)?))
                    .copied();
                if let Some(entry) = entry.filter(|e| !e.is_null()) {
                    targets.push(((*entry).relid, arbiters.clone()));
                }
            }
        }
        targets
    }
}

/// Whether an `INSERT … ON CONFLICT` into `rel` with `arbiters` checks an
/// index other than the one named `creation` in `rel`'s schema (on `rel`,
/// valid) and the unique indexes whose key columns include all of `keys`.
///
/// # Safety
/// `rel` is an open relation.
pub(crate) unsafe fn any_arbiter_but(
    rel: pg_sys::Relation,
    arbiters: &Arbiters,
    creation: &str,
    keys: &[i16],
) -> bool {
    unsafe {
        let creation = std::ffi::CString::new(creation)
            .ok()
            .map(|name| pg_sys::get_relname_relid(name.as_ptr(), (*(*rel).rd_rel).relnamespace))
            .filter(|index| {
                *index != pg_sys::InvalidOid
                    && pg_sys::IndexGetRelation(*index, true) == (*rel).rd_id
                    && pg_sys::get_index_isvalid(*index)
            });
        let indexes = match arbiters {
            Arbiters::These(named) => named.clone(),
            Arbiters::All => {
                let list = pg_sys::RelationGetIndexList(rel);
                let all = list_cells(list, |c| c.oid_value);
                pg_sys::list_free(list);
                all
            }
        };
        let all = matches!(arbiters, Arbiters::All);
        indexes
            .into_iter()
            .any(|index| Some(index) != creation && checks_other_keys(index, all, keys))
    }
}

/// Whether `index` is an arbiter (with `all`, every unique or exclusion
/// index is) that is not unique over all of `keys`.
unsafe fn checks_other_keys(index: pg_sys::Oid, all: bool, keys: &[i16]) -> bool {
    // SAFETY: a relcache entry, released before return.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(index);
        if rel.is_null() {
            return true;
        }
        let form = (*rel).rd_index;
        let answer = if form.is_null() {
            true
        } else if all && !(*form).indisunique && !(*form).indisexclusion {
            false
        } else {
            let n = usize::try_from((*form).indnkeyatts).unwrap_or(0);
            let key = (*form).indkey.values.as_slice(n);
            !((*form).indisunique && keys.iter().all(|k| key.contains(k)))
        };
        pg_sys::RelationClose(rel);
        answer
    }
}

/// Marks the `INSERT … ON CONFLICT` `query` before it runs (once: a portal
/// may run it in several calls), its rows one level below the current
/// depth. A mark left at that depth or deeper belongs to a statement that
/// is gone.
///
/// Whether it is one.
///
/// # Safety
/// As for [`on_conflict_targets`].
unsafe fn mark_on_conflict(query: *mut pg_sys::QueryDesc) -> bool {
    let targets = unsafe { on_conflict_targets(query) };
    if targets.is_empty() {
        return false;
    }
    let depth = DEPTH.get().saturating_add(1);
    ON_CONFLICT.with(|s| {
        let mut s = s.borrow_mut();
        if s.iter().any(|m| m.query == query && m.depth == depth) {
            return;
        }
        s.retain(|m| m.depth < depth);
        s.push(OnConflict {
            query,
            depth,
            targets,
        });
    });
    true
}

/// Removes the mark of `query`, if it has one; returns the depth its rows
/// fired at.
fn unmark_on_conflict(query: *mut pg_sys::QueryDesc) -> Option<u32> {
    ON_CONFLICT.with(|s| {
        let mut s = s.borrow_mut();
        let at = s.iter().rposition(|m| m.query == query)?;
        Some(s.remove(at).depth)
    })
}

/// The statement `query` failed: its mark and what the write path numbered
/// for it go.
fn on_conflict_failed(query: *mut pg_sys::QueryDesc) {
    if let Some(depth) = unmark_on_conflict(query) {
        if let Some(end) = ON_CONFLICT_END.get() {
            (end.failed)(depth);
        }
    }
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
        run_marked(query_desc, || match PREVIOUS_RUN {
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
        run_marked(query_desc, || match PREVIOUS_RUN {
            Some(previous) => previous(query_desc, direction, count),
            None => raw::standard_ExecutorRun(query_desc, direction, count),
        });
    }
}

/// Runs the executor `run` one level deeper, `query` marked if it is an
/// `INSERT … ON CONFLICT`; an error ends the statement and its mark.
///
/// # Safety
/// As for [`try_finally`]'s `body`; `query` is the executor's query.
unsafe fn run_marked(query: *mut pg_sys::QueryDesc, run: impl FnOnce()) {
    unsafe {
        if !mark_on_conflict(query) {
            return deeper(run);
        }
        try_finally(
            || deeper(run),
            |failed| {
                if failed {
                    on_conflict_failed(query);
                }
            },
        );
    }
}

/// ExecutorFinish runs AFTER triggers and the rest of data-modifying CTEs:
/// their rows are a statement's too. After it, an `INSERT … ON CONFLICT`
/// has inserted or skipped all of its rows: the write path checks them.
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    let finish = || match PREVIOUS_FINISH {
        // SAFETY: the hook's argument, passed on as it came.
        Some(previous) => unsafe { previous(query_desc) },
        None => unsafe { raw::standard_ExecutorFinish(query_desc) },
    };
    let marked = ON_CONFLICT.with(|s| {
        s.borrow()
            .iter()
            .rfind(|m| m.query == query_desc)
            .map(|m| m.depth)
    });
    let Some(depth) = marked else {
        // SAFETY: as for try_finally's body.
        return unsafe { deeper(finish) };
    };
    // SAFETY: as for try_finally's body; `ended` is a #[pg_guard] function.
    unsafe {
        try_finally(
            || {
                deeper(finish);
                if let Some(end) = ON_CONFLICT_END.get() {
                    (end.ended)(depth);
                }
            },
            |failed| {
                if failed {
                    on_conflict_failed(query_desc);
                } else {
                    unmark_on_conflict(query_desc);
                }
            },
        );
    }
}
