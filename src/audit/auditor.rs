//! The replay auditor: pure Rust, no SPI. Fed one stored event at a time in
//! log order, it judges each with [`lifecycle::check`] (the writer's own
//! rule) and names what is wrong. A refused event does not change the state,
//! exactly as the writer would not have stored it, so later events are judged
//! as the writer would have judged them.
//!
//! Memory grows with the number of entities of the run (each is remembered
//! to catch late events after its terminal), never with the number of events:
//! see [`Auditor`] for the bytes per entity.

use crate::rules::fold::{Entity, Refusal, RunFold};
use crate::rules::lifecycle::{EntityKind, EventType, Violation};
use crate::rules::validate;

/// Anomaly codes beyond the lifecycle's own ([`Violation::code`]).
pub const RUN_CREATED_NOT_FIRST: &str = "run_created_not_first";
pub const SEQ_GAP: &str = "seq_gap";
pub const SEQ_DUPLICATE: &str = "seq_duplicate";
pub const INVALID_EVENT: &str = "invalid_event";
/// A hook_created whose token another active hook holds (the writer's 23505
/// on workflow_hook_token_unique).
pub const TOKEN_CONFLICT: &str = "token_conflict";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub anomaly: &'static str,
    pub detail: String,
}

/// The replay state of one run.
///
/// Memory: one map entry per entity (its key, [`entity_key`], stored once,
/// and its [`Entity`]), in a map that doubles as it fills. Counted by the
/// test `bytes_per_entity` (`cargo test --lib bytes_per_entity --
/// --nocapture`; 200,000 steps with 11-byte ids): 65 bytes per entity held,
/// 87 at the peak while the map grows (a map of one slot per entity kind
/// under each correlation id took 169 and 244). In a backend, with the
/// allocator's rounding of each key: 113 bytes per entity (302 before), the
/// growth of VmHWM replaying a DevKit-shaped run of 666,666 steps less that
/// of a run of as many events on one entity.
#[derive(Clone, Default)]
pub struct Auditor {
    /// The run's state by the writer's rules.
    fold: RunFold,
    events: i64,
    last_seq: Option<i64>,
}

/// A stored event's seq, as the source has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seq {
    /// The source has no seq column (the DevKit's own table).
    NotStored,
    /// The source has one, and this row's is NULL.
    Null,
    Value(i64),
}

/// One stored event, as read from the source.
#[derive(Clone, Copy, Debug)]
pub struct StoredEvent<'a> {
    /// 1-based position of the event in replay order.
    pub position: i64,
    pub seq: Seq,
    pub id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub type_name: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    /// The hook token a hook_created carries (`payload->>'token'`), if the
    /// source has a jsonb payload.
    pub token: Option<&'a str>,
}

impl StoredEvent<'_> {
    /// Where a finding is reported: the stored seq, else the position.
    pub fn at(&self) -> i64 {
        match self.seq {
            Seq::Value(s) => s,
            Seq::NotStored | Seq::Null => self.position,
        }
    }
}

impl Auditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready for the next run: forgets this one, keeping the maps' memory
    /// unless a large run made them large (then clearing them per run would
    /// cost more than allocating anew).
    pub fn reset(&mut self) {
        self.fold.reset();
        self.events = 0;
        self.last_seq = None;
    }

    /// Judges the next stored event of the run and returns the findings for
    /// it (usually none).
    pub fn feed(&mut self, e: &StoredEvent<'_>) -> Vec<Finding> {
        self.events = self.events.saturating_add(1);
        let mut found = Vec::new();
        if let Some(f) = self.check_seq(e.seq) {
            found.push(f);
        }
        if let Some(f) = self.check_event(e) {
            found.push(f);
        }
        found
    }

    /// The writer numbers every event of a run 1, 2, 3, … in commit order.
    /// A NULL or non-positive seq is no seq the writer could have stored; it
    /// is reported and does not move the expected next seq. Arithmetic is
    /// checked: after i64::MAX nothing but a duplicate can follow.
    fn check_seq(&mut self, seq: Seq) -> Option<Finding> {
        let seq = match seq {
            Seq::NotStored => return None,
            Seq::Null => {
                return Some(Finding {
                    anomaly: INVALID_EVENT,
                    detail: "seq is null; every stored event has a seq".into(),
                })
            }
            Seq::Value(s) if s < 1 => {
                return Some(Finding {
                    anomaly: INVALID_EVENT,
                    detail: format!("seq {s} is not positive; a run's seqs start at 1"),
                })
            }
            Seq::Value(s) => s,
        };
        let last = self.last_seq;
        self.last_seq = Some(last.map_or(seq, |l| l.max(seq)));
        if last == Some(seq) {
            return Some(Finding {
                anomaly: SEQ_DUPLICATE,
                detail: format!("seq {seq} is used by more than one event of this run"),
            });
        }
        match last.map_or(Some(1), |l| l.checked_add(1)) {
            Some(expected) if seq > expected => Some(Finding {
                anomaly: SEQ_GAP,
                detail: format!(
                    "seq jumps from {} to {seq}: {} position(s) missing before this event",
                    expected - 1,
                    seq - expected
                ),
            }),
            _ => None,
        }
    }

    fn check_event(&mut self, e: &StoredEvent<'_>) -> Option<Finding> {
        // The writer's own argument rules (src/rules/validate.rs), so the audit
        // reports exactly the rows the writer would have refused.
        let checked = validate::address(e.run_id, e.correlation_id, e.type_name)
            .and_then(|addr| validate::optional_ident("id", e.id).map(|_| addr));
        let addr = match checked {
            Ok(addr) => addr,
            Err(err) => {
                return Some(Finding {
                    anomaly: INVALID_EVENT,
                    detail: err.message(),
                })
            }
        };
        let (position, event, corr) = (e.position, addr.event, addr.correlation_id);
        let kind = event.entity_kind(corr.is_some());
        // Events before it were reported as missing_run_created; it is
        // accepted as the run's creation so what follows is judged normally.
        let late_creation =
            event == EventType::RunCreated && self.fold.run().is_none() && self.events > 1;
        match self.fold.apply(position, event, corr, e.token) {
            Ok(()) if late_creation => Some(Finding {
                anomaly: RUN_CREATED_NOT_FIRST,
                detail: format!(
                    "run_created is event {} of the run; it must be the first",
                    self.events
                ),
            }),
            Ok(()) => None,
            Err(Refusal::Lifecycle(v)) => {
                let entity = self.fold.entity(kind, corr);
                Some(Finding {
                    anomaly: v.code(),
                    detail: self.explain(v, event, kind, corr, entity),
                })
            }
            Err(Refusal::TokenHeld { token, holder }) => Some(Finding {
                anomaly: TOKEN_CONFLICT,
                detail: format!(
                    "token \"{token}\" is held by active hook \"{holder}\"; hook \"{}\" cannot take it",
                    corr.unwrap_or_default()
                ),
            }),
        }
    }

    /// A sentence a person can act on.
    fn explain(
        &self,
        v: Violation,
        event: EventType,
        kind: EntityKind,
        corr: Option<&str>,
        entity: Option<Entity>,
    ) -> String {
        let what = match corr {
            Some(c) if kind != EntityKind::Run => format!("{kind} \"{c}\""),
            _ => "the run".to_string(),
        };
        match v {
            Violation::MissingRunCreated => {
                format!("{event} before any run_created: the run was never created")
            }
            Violation::DuplicateCreation => {
                let at = entity.or(self.fold.run()).map_or(0, |e| e.created);
                format!(
                    "{what} was already created at position {at}; a replay has no consumer for this \
                     second {event} (\"Unconsumed event in event log\")"
                )
            }
            Violation::MissingCreation => {
                format!(
                    "{event} for {what}, which was never created (no {}_created before it)",
                    kind
                )
            }
            Violation::EventAfterTerminal { state } => {
                let at = match kind {
                    EntityKind::Run => self.fold.run().map_or(0, |r| r.since),
                    _ => entity.map_or(0, |e| e.since),
                };
                format!("{event} after {what} was already {state} at position {at}")
            }
            Violation::EventAfterRunTerminal { run_state } => format!(
                "{event} for {what} after the run was {run_state} at position {}: nothing new may \
                 be created or started on a finished run",
                self.fold.run().map_or(0, |r| r.since)
            ),
            Violation::IllegalTransition { state } => {
                format!("{event} is not allowed while {what} is {state}")
            }
        }
    }

    /// Distinct entities remembered: the auditor's memory, for the tests.
    pub fn entities_remembered(&self) -> usize {
        self.fold.entities_remembered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::lifecycle::CorrelationRule;
    use std::collections::HashMap;

    impl Auditor {
        /// `feed` for a well-formed row of run "r"; `seq` None: no seq column.
        fn feed_at(
            &mut self,
            position: i64,
            seq: Option<i64>,
            t: &str,
            c: Option<&str>,
        ) -> Vec<Finding> {
            self.feed(&StoredEvent {
                position,
                seq: seq.map_or(Seq::NotStored, Seq::Value),
                id: Some("wevt_x"),
                run_id: Some("r"),
                type_name: Some(t),
                correlation_id: c,
                token: None,
            })
        }
    }

    /// Feeds rows of one run with explicit seqs (None = NULL) and returns
    /// (at, anomaly) pairs.
    fn audit_seqs(seqs: &[Option<i64>]) -> Vec<(i64, &'static str)> {
        let mut a = Auditor::new();
        let mut out = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let t = if i == 0 { "run_created" } else { "attr_set" };
            let e = StoredEvent {
                position: i as i64 + 1,
                seq: s.map_or(Seq::Null, Seq::Value),
                id: Some("wevt_x"),
                run_id: Some("r"),
                type_name: Some(t),
                correlation_id: None,
                token: None,
            };
            out.extend(a.feed(&e).into_iter().map(|f| (e.at(), f.anomaly)));
        }
        out
    }

    /// Extreme and odd seqs are findings, never an overflow.
    #[test]
    fn extreme_seqs_are_reported_without_overflow() {
        let max = i64::MAX;
        let min = i64::MIN;
        #[rustfmt::skip]
        type Case = (Vec<Option<i64>>, Vec<(i64, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![Some(1), Some(2), Some(3)], vec![]),
            (
                vec![Some(max), Some(max)],
                vec![(max, SEQ_GAP), (max, SEQ_DUPLICATE)],
            ),
            (vec![Some(min), Some(1)], vec![(min, INVALID_EVENT)]),
            (vec![Some(0), Some(1), Some(2)], vec![(0, INVALID_EVENT)]),
            (vec![Some(1), Some(max)], vec![(max, SEQ_GAP)]),
            (
                vec![Some(1), Some(max), Some(max)],
                vec![(max, SEQ_GAP), (max, SEQ_DUPLICATE)],
            ),
            (vec![Some(1), None, Some(2)], vec![(2, INVALID_EVENT)]),
            (
                vec![None, None],
                vec![(1, INVALID_EVENT), (2, INVALID_EVENT)],
            ),
        ];
        for (seqs, want) in cases {
            assert_eq!(audit_seqs(&seqs), want, "{seqs:?}");
        }
    }

    /// The audit applies the writer's argument rules to every stored column.
    #[test]
    fn rows_the_writer_refuses_are_invalid_events() {
        let long = "x".repeat(crate::errors::MAX_IDENT_BYTES + 1);
        #[rustfmt::skip]
        let cases: Vec<(Option<&str>, Option<&str>, &str)> = vec![
            (Some("r"), Some("wevt_1"), "ok"),
            (Some("r"), None, "ok"),                       // the writer assigns a NULL id
            (Some("r"), Some(""), INVALID_EVENT),
            (Some("r"), Some(&long), INVALID_EVENT),
            (Some(""), Some("wevt_1"), INVALID_EVENT),
            (Some(&long), Some("wevt_1"), INVALID_EVENT),
            (None, Some("wevt_1"), INVALID_EVENT),
        ];
        for (run, id, want) in cases {
            let mut a = Auditor::new();
            let e = StoredEvent {
                position: 1,
                seq: Seq::NotStored,
                id,
                run_id: run,
                type_name: Some("run_created"),
                correlation_id: None,
                token: None,
            };
            let got = a.feed(&e).first().map_or("ok", |f| f.anomaly);
            assert_eq!(got, want, "run {run:?} id {id:?}");
        }
    }

    /// Two active hooks of a run cannot hold one token; dispose releases it.
    #[test]
    fn a_token_has_one_active_holder() {
        let mut a = Auditor::new();
        let mut pos = 0;
        let mut feed = |t: &str, c: Option<&str>, token: Option<&str>| {
            pos += 1;
            a.feed(&StoredEvent {
                position: pos,
                seq: Seq::NotStored,
                id: Some("wevt_x"),
                run_id: Some("r"),
                type_name: Some(t),
                correlation_id: c,
                token,
            })
            .into_iter()
            .map(|f| f.anomaly)
            .collect::<Vec<_>>()
        };
        assert!(feed("run_created", None, None).is_empty());
        assert!(feed("run_started", None, None).is_empty());
        assert!(feed("hook_created", Some("h1"), Some("t")).is_empty());
        assert_eq!(
            feed("hook_created", Some("h2"), Some("t")),
            [TOKEN_CONFLICT]
        );
        // The refused creation left no hook behind: h2 may be born in conflict.
        assert!(feed("hook_conflict", Some("h2"), Some("t")).is_empty());
        assert!(feed("hook_created", Some("h3"), Some("u")).is_empty());
        assert!(feed("hook_disposed", Some("h1"), None).is_empty());
        assert!(feed("hook_created", Some("h4"), Some("t")).is_empty());
        assert_eq!(
            feed("hook_created", Some("h5"), Some("u")),
            [TOKEN_CONFLICT]
        );
        assert!(feed("hook_created", Some("h6"), None).is_empty());
    }

    /// An event for a hook that ended (disposed, or born in conflict) is an
    /// event after its terminal, whichever type it is.
    #[test]
    fn ended_hooks_report_event_after_terminal() {
        for (end, then) in [
            ("hook_disposed", "hook_conflict"),
            ("hook_disposed", "hook_received"),
            ("hook_conflict", "hook_created"),
            ("hook_conflict", "hook_conflict"),
            ("hook_conflict", "hook_disposed"),
        ] {
            let mut a = Auditor::new();
            let mut log = vec![("run_created", None), ("run_started", None)];
            if end == "hook_disposed" {
                log.push(("hook_created", Some("h")));
            }
            log.push((end, Some("h")));
            for (i, (t, c)) in log.iter().enumerate() {
                assert!(a.feed_at(i as i64 + 1, None, t, *c).is_empty(), "{t}");
            }
            let got = a.feed_at(9, None, then, Some("h"));
            assert_eq!(
                got[0].anomaly, "event_after_terminal",
                "{then} after {end}: {got:?}"
            );
        }
    }

    /// A keyed attr_set after the run's terminal is a creation after it,
    /// like a step_created there, not an event of an attribute
    /// that never existed; an unkeyed one is an event of the finished run.
    #[test]
    fn keyed_attr_after_run_terminal_is_a_late_creation() {
        let mut a = Auditor::new();
        assert!(a.feed_at(1, None, "run_created", None).is_empty());
        assert!(a.feed_at(2, None, "run_cancelled", None).is_empty());
        let got = a.feed_at(3, None, "attr_set", Some("z"));
        assert_eq!(
            got,
            [Finding {
                anomaly: "event_after_run_terminal",
                detail: "attr_set for attribute \"z\" after the run was cancelled at position 2: \
                         nothing new may be created or started on a finished run"
                    .into(),
            }]
        );
        let got = a.feed_at(4, None, "attr_set", None);
        assert_eq!(
            got,
            [Finding {
                anomaly: "event_after_terminal",
                detail: "attr_set after the run was already cancelled at position 2".into(),
            }]
        );
    }

    use crate::testing::Rng;

    type Event = (EventType, Option<String>);

    const CORRS: [&str; 5] = ["s1", "s2", "w1", "h1", "h2"];

    /// A random history the writer would accept: at each step, one of the
    /// (type, correlation id) pairs that lifecycle::check allows in the
    /// model state, chosen uniformly, so deep lifecycles are common.
    fn valid_history(rng: &mut Rng, len: usize) -> Vec<Event> {
        let mut model = Auditor::new();
        let mut log = vec![(EventType::RunCreated, None)];
        assert!(model.feed_at(1, Some(1), "run_created", None).is_empty());
        while log.len() < len {
            let pos = log.len() as i64 + 1;
            let mut legal = Vec::new();
            for t in EventType::ALL {
                let corrs: Vec<Option<&str>> = match t.correlation_rule() {
                    CorrelationRule::Required => CORRS.iter().map(|c| Some(*c)).collect(),
                    _ => vec![None],
                };
                for c in corrs {
                    let mut probe = model.clone();
                    if probe.feed_at(pos, Some(pos), t.as_str(), c).is_empty() {
                        legal.push((t, c.map(str::to_string)));
                    }
                }
            }
            if legal.is_empty() {
                break;
            }
            let (t, c) = legal.swap_remove(rng.below(legal.len()));
            assert!(model
                .feed_at(pos, Some(pos), t.as_str(), c.as_deref())
                .is_empty());
            log.push((t, c));
        }
        log
    }

    fn audit(log: &[Event], seqs: Option<&[i64]>) -> Vec<(i64, &'static str)> {
        let mut a = Auditor::new();
        let mut out = Vec::new();
        for (i, (t, c)) in log.iter().enumerate() {
            let seq = seqs.map(|s| s[i]);
            let pos = seq.unwrap_or(i as i64 + 1);
            for f in a.feed_at(pos, seq, t.as_str(), c.as_deref()) {
                out.push((pos, f.anomaly));
            }
        }
        out
    }

    #[test]
    fn random_valid_histories_replay_clean() {
        for seed in 1..=2_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let log = valid_history(&mut rng, 40);
            let seqs: Vec<i64> = (1..=log.len() as i64).collect();
            assert_eq!(audit(&log, Some(&seqs)), vec![], "seed {seed}: {log:?}");
        }
    }

    /// Each kind of corruption, injected into random valid histories, is
    /// reported with its code at the position of the injected event.
    #[test]
    fn injected_corruptions_are_reported_at_their_position() {
        let mut checked = HashMap::new();
        for seed in 1..=2_000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let log = valid_history(&mut rng, 30);
            let n = log.len();
            // Duplicate an entity creation at the end (vercel/workflow#2039).
            if let Some(i) = log
                .iter()
                .position(|(t, _)| t.is_suspension() && *t != EventType::RunCreated)
            {
                let mut bad = log.clone();
                bad.push(log[i].clone());
                assert_eq!(
                    audit(&bad, None),
                    vec![(n as i64 + 1, "duplicate_creation")],
                    "seed {seed}"
                );
                *checked.entry("duplicate_creation").or_insert(0) += 1;
            }
            // A second run_created (vercel/workflow#2983).
            let mut bad = log.clone();
            bad.insert(n / 2 + 1, (EventType::RunCreated, None));
            assert_eq!(
                audit(&bad, None),
                vec![(n as i64 / 2 + 2, "duplicate_creation")],
                "seed {seed}"
            );
            // A late start after a completed step (vercel/workflow#2331).
            if let Some(i) = log.iter().position(|(t, _)| *t == EventType::StepCompleted) {
                let mut bad = log.clone();
                bad.push((EventType::StepStarted, log[i].1.clone()));
                let got = audit(&bad, None);
                assert_eq!(got.len(), 1, "seed {seed}: {got:?}");
                assert_eq!(got[0].0, n as i64 + 1);
                assert!(
                    ["event_after_terminal"].contains(&got[0].1),
                    "seed {seed}: {got:?}"
                );
                *checked.entry("event_after_terminal").or_insert(0) += 1;
            }
            // An event for an entity never created.
            let mut bad = log.clone();
            bad.push((EventType::StepStarted, Some("never".into())));
            assert_eq!(
                audit(&bad, None),
                vec![(n as i64 + 1, "missing_creation")],
                "seed {seed}"
            );
            // run_created not first.
            let mut bad = log.clone();
            bad.swap(0, 1.min(n - 1));
            if n > 1 {
                let got = audit(&bad, None);
                assert_eq!(got[0], (1, "missing_run_created"), "seed {seed}: {got:?}");
                assert_eq!(got[1], (2, RUN_CREATED_NOT_FIRST), "seed {seed}: {got:?}");
                *checked.entry(RUN_CREATED_NOT_FIRST).or_insert(0) += 1;
            }
            // Seq gap and duplicate seq.
            let mut seqs: Vec<i64> = (1..=n as i64).collect();
            if n > 3 {
                for s in seqs.iter_mut().skip(2) {
                    *s += 1;
                }
                assert_eq!(audit(&log, Some(&seqs)), vec![(4, SEQ_GAP)], "seed {seed}");
                let mut dup: Vec<i64> = (1..=n as i64).collect();
                dup[3] = 3;
                for s in dup.iter_mut().skip(4) {
                    *s -= 1;
                }
                assert_eq!(
                    audit(&log, Some(&dup)),
                    vec![(3, SEQ_DUPLICATE)],
                    "seed {seed}"
                );
            }
        }
        for code in [
            "duplicate_creation",
            "event_after_terminal",
            RUN_CREATED_NOT_FIRST,
        ] {
            assert!(
                checked.get(code).copied().unwrap_or(0) > 100,
                "{code} checked too rarely: {checked:?}"
            );
        }
    }

    #[test]
    fn each_code_has_its_example() {
        use EventType as E;
        let r = |t: EventType| (t, None::<String>);
        let s = |t: EventType, c: &str| (t, Some(c.to_string()));
        let cases: Vec<(Vec<Event>, (i64, &str))> = vec![
            (
                vec![r(E::RunCreated), r(E::RunCreated)],
                (2, "duplicate_creation"),
            ),
            (vec![r(E::RunStarted)], (1, "missing_run_created")),
            (
                vec![s(E::StepCreated, "a"), r(E::RunCreated)],
                (2, RUN_CREATED_NOT_FIRST),
            ),
            (
                vec![r(E::RunCreated), s(E::StepStarted, "a")],
                (2, "missing_creation"),
            ),
            (
                vec![
                    r(E::RunCreated),
                    r(E::RunStarted),
                    s(E::StepCreated, "a"),
                    s(E::StepStarted, "a"),
                    s(E::StepCompleted, "a"),
                    s(E::StepStarted, "a"),
                ],
                (6, "event_after_terminal"),
            ),
            (
                vec![r(E::RunCreated), r(E::RunCancelled), s(E::StepCreated, "a")],
                (3, "event_after_run_terminal"),
            ),
            (
                vec![
                    r(E::RunCreated),
                    s(E::StepCreated, "a"),
                    s(E::StepRetrying, "a"),
                ],
                (3, "illegal_transition"),
            ),
            (
                vec![r(E::RunCreated), s(E::StepCreated, "")],
                (2, INVALID_EVENT),
            ),
            (vec![r(E::RunCreated), s(E::StepCreated, "a")], (2, "ok")),
        ];
        for (log, (pos, code)) in cases {
            let got = audit(&log, None);
            if code == "ok" {
                assert!(got.is_empty(), "{log:?}: {got:?}");
            } else {
                assert!(got.contains(&(pos, code)), "{log:?}: {got:?}");
            }
        }
        let mut a = Auditor::new();
        assert_eq!(a.feed_at(1, None, "run_created", None), vec![]);
        assert_eq!(
            a.feed_at(2, None, "step_exploded", Some("a"))[0].anomaly,
            INVALID_EVENT
        );
        assert_eq!(
            a.feed_at(3, None, "step_created", None)[0].anomaly,
            INVALID_EVENT
        );
    }

    /// The bytes this thread has asked the allocator for and not given
    /// back, and their peak: what the memory test counts.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn add(bytes: isize) {
            // try_with: nothing to count while the thread is torn down.
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + bytes);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
            });
        }

        /// (live, peak) since the last call, which starts a new count.
        pub fn restart() -> (isize, isize) {
            let live = LIVE.with(|l| l.replace(0));
            let peak = PEAK.with(|p| p.replace(0));
            (live, peak)
        }

        // SAFETY: every call is passed on to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                add(layout.size() as isize);
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                add(layout.size() as isize);
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                add(-(layout.size() as isize));
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                add(new_size as isize - layout.size() as isize);
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }
    }

    #[global_allocator]
    static COUNTING: counting::Counting = counting::Counting;

    /// The auditor's bytes per entity, counted (the figure in the doc of
    /// [`Auditor`]): a run of steps, each created, started and completed.
    /// `cargo test --lib bytes_per_entity -- --nocapture` prints it.
    #[test]
    fn bytes_per_entity() {
        const STEPS: i64 = 200_000;
        let ids: Vec<String> = (0..STEPS).map(|i| format!("step_{i:06}")).collect();
        let mut a = Auditor::new();
        counting::restart();
        a.feed_at(1, None, "run_created", None);
        a.feed_at(2, None, "run_started", None);
        let mut pos = 2;
        for id in &ids {
            for t in ["step_created", "step_started", "step_completed"] {
                pos += 1;
                assert!(a.feed_at(pos, None, t, Some(id)).is_empty());
            }
        }
        let (live, peak) = counting::restart();
        let (live, peak) = (live as i64 / STEPS, peak as i64 / STEPS);
        println!("auditor: {live} bytes per entity held, {peak} at the peak ({STEPS} steps, ids of {} bytes)", ids[0].len());
        assert_eq!(a.entities_remembered(), STEPS as usize);
        // Each entity costs its key (with its kind) and one entry: the key's
        // pointer, its state and a control byte, in a map at least 7/16
        // full (it doubles at 7/8); while it doubles, the old map (half the
        // new one) is alive too.
        let key = ids[0].len() as i64 + 1;
        let entry = (std::mem::size_of::<(Box<str>, Entity)>() + 1) as i64;
        let (held_max, peak_max) = (key + entry * 16 / 7, key + entry * 24 / 7);
        assert!(
            live <= held_max,
            "{live} bytes per entity, more than {held_max}"
        );
        assert!(
            peak <= peak_max,
            "{peak} bytes per entity at the peak, more than {peak_max}"
        );
        drop(a);
    }

    #[test]
    fn memory_grows_with_entities_not_events() {
        let mut a = Auditor::new();
        a.feed_at(1, Some(1), "run_created", None);
        a.feed_at(2, Some(2), "run_started", None);
        a.feed_at(3, Some(3), "hook_created", Some("h"));
        for i in 4..100_000 {
            assert!(a.feed_at(i, Some(i), "hook_received", Some("h")).is_empty());
        }
        assert_eq!(a.entities_remembered(), 1);
    }
}
