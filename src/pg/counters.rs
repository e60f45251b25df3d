//! The write path's counters, in shared memory: events admitted, events
//! refused by anomaly code, runs finished by terminal state, since the
//! server started. PostgreSQL hands shared memory out only to libraries
//! loaded by `shared_preload_libraries`; without it the extension works the
//! same and `counters_since_start()` returns no rows. The counters are the
//! cluster's, not one database's: every database's writes add to them.

use crate::rules::lifecycle::{State, Violation};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a counter counts: the admitted events, one refusal per anomaly
/// code the writer can give, then the runs that reached each terminal state
/// (a state, not a row: the count of finished runs per state without
/// reading them all, which a scrape could not afford on a long log).
const COUNTED: [&str; 11] = [
    "appended",
    "missing_run_created",
    "duplicate_creation",
    "missing_creation",
    "event_after_terminal",
    "event_after_run_terminal",
    "illegal_transition",
    "invalid_event",
    "runs_completed",
    "runs_failed",
    "runs_cancelled",
];

static COUNTERS: PgAtomic<[AtomicU64; COUNTED.len()]> =
    unsafe { PgAtomic::new(c"workflow_ext_counters") };

/// Set in the postmaster by `_PG_init` under `shared_preload_libraries`;
/// every backend forked from it inherits it, with the attached segment.
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init`: asks for the counters' shared memory when the
/// library is being preloaded (it cannot be had later).
pub fn init() {
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(COUNTERS);
        IN_SHARED_MEMORY.store(true, Ordering::Relaxed);
    }
}

fn counters() -> Option<&'static [AtomicU64; COUNTED.len()]> {
    IN_SHARED_MEMORY
        .load(Ordering::Relaxed)
        .then(|| COUNTERS.get())
}

/// Adds one to the counter named `name` (one of [`COUNTED`]).
fn bump(name: &str) {
    if let (Some(c), Some(slot)) = (counters(), COUNTED.iter().position(|c| *c == name)) {
        c[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// An event the validator admitted (its transaction may still roll back).
pub fn count_appended() {
    bump("appended");
}

/// An event the validator refused: the lifecycle's anomaly, or
/// `invalid_event` for a row its argument rules refuse.
pub fn count_refused(violation: Option<Violation>) {
    bump(violation.map_or("invalid_event", Violation::code));
}

/// A run the validator moved into its terminal state (its transaction may
/// still roll back).
pub fn count_run_finished(state: State) {
    match state {
        State::RunCompleted => bump("runs_completed"),
        State::RunFailed => bump("runs_failed"),
        State::RunCancelled => bump("runs_cancelled"),
        _ => {}
    }
}

/// The write path's counters since the server started: `appended`, one row
/// per anomaly code, the runs finished per terminal state. No rows without
/// `shared_preload_libraries`.
#[pg_extern(sql = false)] // declared in sql/monitoring.sql
fn counters_since_start(
) -> TableIterator<'static, (name!(counter, &'static str), name!(value, i64))> {
    let rows: Vec<(&'static str, i64)> = counters()
        .map(|c| {
            COUNTED
                .iter()
                .zip(c.iter())
                .map(|(name, v)| {
                    (
                        *name,
                        i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    TableIterator::new(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_code_has_a_counter() {
        use Violation as V;
        for v in [
            V::MissingRunCreated,
            V::DuplicateCreation,
            V::MissingCreation,
            V::EventAfterTerminal {
                state: State::RunCompleted,
            },
            V::EventAfterRunTerminal {
                run_state: State::RunCompleted,
            },
            V::IllegalTransition {
                state: State::StepPending,
            },
        ] {
            assert!(COUNTED.contains(&v.code()), "{}", v.code());
        }
    }
}
