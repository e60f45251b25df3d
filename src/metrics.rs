//! Monitoring: counters of the write path in shared memory, and what
//! `metrics()` / `stuck_runs()` (sql/monitoring.sql) need from the rules.
//!
//! The counters (events admitted, events refused by anomaly code, runs
//! finished by terminal state, since the server started) live in shared
//! memory, which PostgreSQL hands out only
//! to libraries loaded by `shared_preload_libraries`. Without it the
//! extension works the same and `counters_since_start()` returns no rows.

use crate::lifecycle::{self, EntityKind, State, Violation};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::collections::HashMap;
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

/// The entities a run's events (types and correlation ids, in log order)
/// leave active, as "<kind> <correlation id> (<state>)", judged by the
/// writer's rules (a refused event changes nothing, as in the audit), in
/// order of creation. Linear in the events: a run may have many entities,
/// and `stuck_runs()` calls this on whole logs. `interrupt` is called once
/// per event and per entity returned: in the backend it lets a cancel or
/// statement_timeout end the call (unit tests, outside one, pass a no-op).
pub fn active_entities<'a>(
    events: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    mut interrupt: impl FnMut(),
) -> Vec<String> {
    let mut run: Option<State> = None;
    // Each entity's state, in order of creation (the output's order), and
    // where to find it by (kind, correlation id).
    let mut entities: Vec<((EntityKind, &'a str), State)> = Vec::new();
    let mut slots: HashMap<(EntityKind, &'a str), usize> = HashMap::new();
    for (t, corr) in events {
        interrupt();
        // Rows the writer's argument rules refuse change nothing.
        let Ok(addr) = crate::validate::address(Some("run"), corr, t) else {
            continue;
        };
        let (event, corr) = (addr.event, addr.correlation_id);
        let kind = event.entity_kind(corr.is_some());
        match (kind, corr) {
            (EntityKind::Run, _) | (_, None) => {
                if lifecycle::check(run, None, event).is_ok() {
                    run = lifecycle::run_state_after(run, event);
                }
            }
            (kind, Some(c)) => {
                let slot = slots.get(&(kind, c)).copied();
                let state = slot.map(|i| entities[i].1);
                if lifecycle::check(run, state, event).is_ok() {
                    if let Some(after) = lifecycle::entity_state_after(event) {
                        match slot {
                            Some(i) => entities[i].1 = after,
                            None => {
                                slots.insert((kind, c), entities.len());
                                entities.push(((kind, c), after));
                            }
                        }
                    }
                }
            }
        }
    }
    entities
        .into_iter()
        .filter(|(_, s)| !s.is_terminal())
        .map(|((kind, c), s)| {
            interrupt();
            format!("{kind} {c} ({s})")
        })
        .collect()
}

#[pg_extern(sql = false)] // declared in sql/monitoring.sql
fn active_entities_of(types: Array<'_, &str>, correlation_ids: Array<'_, &str>) -> Vec<String> {
    active_entities(types.iter().zip(correlation_ids.iter()), || {
        check_for_interrupts!();
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn active_entities_follow_the_writer() {
        let log: &[(&str, Option<&str>)] = &[
            ("run_created", None),
            ("run_started", None),
            ("step_created", Some("s1")),
            ("step_started", Some("s1")),
            ("step_created", Some("s2")),
            ("step_started", Some("s2")),
            ("step_completed", Some("s2")),
            ("step_started", Some("s2")), // refused: changes nothing
            ("wait_created", Some("w1")),
            ("hook_created", Some("h1")),
            ("hook_disposed", Some("h1")),
            ("attr_set", Some("color")),
            ("hook_received", Some("nope")), // refused: never created
        ];
        let got = active_entities(log.iter().map(|(t, c)| (Some(*t), *c)), || {});
        assert_eq!(got, vec!["step s1 (running)", "wait w1 (waiting)"]);
        assert!(active_entities(std::iter::empty(), || {}).is_empty());
    }

    /// Many entities in one run: a search per event (what this replaced)
    /// made the call quadratic in them.
    #[test]
    fn active_entities_of_a_run_with_many_entities() {
        let steps: Vec<String> = (0..200_000).map(|i| format!("s{i}")).collect();
        let mut log: Vec<(&str, Option<&str>)> = vec![("run_created", None), ("run_started", None)];
        log.extend(steps.iter().map(|s| ("step_created", Some(s.as_str()))));
        for (i, s) in steps.iter().enumerate() {
            log.push(("step_started", Some(s)));
            if i % 2 == 0 {
                log.push(("step_completed", Some(s)));
            }
        }
        let mut checks = 0;
        let got = active_entities(log.iter().map(|(t, c)| (Some(*t), *c)), || checks += 1);
        let want: Vec<String> = steps
            .iter()
            .skip(1)
            .step_by(2)
            .map(|s| format!("step {s} (running)"))
            .collect();
        assert_eq!(got, want);
        // Interruptible throughout: a check per event and per entity returned.
        assert_eq!(checks, log.len() + want.len());
    }

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
