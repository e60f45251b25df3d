//! Monitoring: what `metrics()` / `stuck_runs()` (sql/monitoring.sql) need
//! from the rules. The counters themselves are [`crate::pg::counters`].

use crate::rules::fold::{Entity, RunFold};
use crate::rules::lifecycle::EntityKind;
use pgrx::prelude::*;

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
    let mut fold = RunFold::new();
    for (position, (t, corr)) in (1..).zip(events) {
        interrupt();
        // Rows the writer's argument rules refuse change nothing.
        let Ok(addr) = crate::rules::validate::address(Some("run"), corr, t) else {
            continue;
        };
        // A refused event changes nothing: its verdict is not needed here.
        let _ = fold.apply(position, addr.event, addr.correlation_id, None);
    }
    // In order of creation.
    let mut active: Vec<(EntityKind, &str, Entity)> = fold
        .entities()
        .filter(|(_, _, e)| !e.state.is_terminal())
        .collect();
    active.sort_unstable_by_key(|(_, _, e)| e.created);
    active
        .into_iter()
        .map(|(kind, c, e)| {
            interrupt();
            format!("{kind} {c} ({})", e.state)
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
}
