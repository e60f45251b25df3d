//! Protecting existing event tables in place: `attach` / `detach` and the
//! index watcher live in `sql/attach.sql` (DDL around one PL/pgSQL body
//! each); the rows are checked by the same trigger as `workflow_ext.events`
//! (`crate::append`). What attach needs from the rules is here: the state
//! a run's stored events leave it in, by the writer's own lifecycle.

use crate::lifecycle::{self, EntityKind, EventType};
use pgrx::prelude::*;

/// The run's state after its events, in log order, as the writer would
/// have left it: each run-level event the lifecycle accepts moves the
/// state, a refused one does not (as in the audit). `None` for a run
/// without run_created. Used by `attach` to seed `workflow_ext.runs`.
pub fn run_state_after_events<'a>(
    types: impl IntoIterator<Item = Option<&'a str>>,
) -> Option<lifecycle::State> {
    let mut state = None;
    for event in types.into_iter().flatten().filter_map(EventType::parse) {
        if event.kind() == EntityKind::Run && lifecycle::check(state, None, event).is_ok() {
            state = lifecycle::run_state_after(state, event);
        }
    }
    state
}

#[pg_extern(sql = false)] // declared in sql/functions.sql
fn run_state(types: Array<'_, &str>) -> Option<&'static str> {
    run_state_after_events(types.iter()).map(lifecycle::State::as_str)
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::lifecycle::State;

    #[test]
    fn run_state_follows_the_writer() {
        let cases: &[(&[&str], Option<State>)] = &[
            (&[], None),
            (&["run_started"], None),
            (&["run_created"], Some(State::RunPending)),
            (
                &["run_created", "step_created", "run_started"],
                Some(State::RunRunning),
            ),
            (
                &["run_created", "run_started", "run_completed"],
                Some(State::RunCompleted),
            ),
            // A refused event leaves the state: completed stays completed.
            (
                &["run_created", "run_started", "run_completed", "run_started"],
                Some(State::RunCompleted),
            ),
            (
                &["run_created", "run_cancelled", "run_cancelled", "noop"],
                Some(State::RunCancelled),
            ),
            (
                &["run_created", "attr_set", "bogus", "run_started"],
                Some(State::RunRunning),
            ),
        ];
        for (types, want) in cases {
            let got = run_state_after_events(types.iter().map(|t| Some(*t)));
            assert_eq!(got, *want, "{types:?}");
        }
    }
}
