//! The replay auditor: pure Rust, no SPI. Fed one stored event at a time in
//! log order, it judges each with [`lifecycle::check`] (the writer's own
//! rule) and names what is wrong. A refused event does not change the state,
//! exactly as the writer would not have stored it, so later events are judged
//! as the writer would have judged them.
//!
//! Memory grows with the number of entities of the run (each is remembered
//! to catch late events after its terminal), never with the number of events.

use crate::lifecycle::{self, CorrelationRule, EntityKind, EventType, State, Violation};
use crate::validate;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: correlation ids are short, trusted-length keys in a map that
/// lives for one replay; SipHash's DoS resistance buys nothing here and
/// cost a tenth of replay time.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Anomaly codes beyond the lifecycle's own ([`Violation::code`]).
pub const RUN_CREATED_NOT_FIRST: &str = "run_created_not_first";
pub const SEQ_GAP: &str = "seq_gap";
pub const SEQ_DUPLICATE: &str = "seq_duplicate";
pub const INVALID_EVENT: &str = "invalid_event";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub anomaly: &'static str,
    pub detail: String,
}

/// What the auditor remembers of one entity.
#[derive(Clone, Copy, Debug)]
struct Entity {
    state: State,
    /// Position of the event that put it in `state`.
    since: i64,
    /// Position of its creation.
    created: i64,
}

#[derive(Clone, Default)]
pub struct Auditor {
    run: Option<Entity>,
    /// Per correlation id, one slot per entity kind (step, wait, hook).
    entities: HashMap<String, [Option<Entity>; 3], BuildHasherDefault<Fnv>>,
    events: i64,
    last_seq: Option<i64>,
}

fn slot(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Step => 0,
        EntityKind::Wait => 1,
        _ => 2,
    }
}

impl Auditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges the next event. `position` is the event's seq (or its 1-based
    /// position when the source has no seq); `seq` is the stored seq, if the
    /// source has one. Returns the findings for this event (usually none).
    pub fn feed(
        &mut self,
        position: i64,
        seq: Option<i64>,
        type_name: &str,
        correlation_id: Option<&str>,
    ) -> Vec<Finding> {
        self.events += 1;
        let mut found = Vec::new();
        if let Some(seq) = seq {
            self.check_seq(seq, &mut found);
        }
        if let Some(f) = self.check_event(position, type_name, correlation_id) {
            found.push(f);
        }
        found
    }

    fn check_seq(&mut self, seq: i64, found: &mut Vec<Finding>) {
        let expected = self.last_seq.map_or(1, |s| s + 1);
        if Some(seq) == self.last_seq {
            found.push(Finding {
                anomaly: SEQ_DUPLICATE,
                detail: format!("seq {seq} is used by more than one event of this run"),
            });
        } else if seq > expected {
            found.push(Finding {
                anomaly: SEQ_GAP,
                detail: format!(
                    "seq jumps from {} to {seq}: {} position(s) missing before this event",
                    expected - 1,
                    seq - expected
                ),
            });
        }
        self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
    }

    fn check_event(&mut self, position: i64, type_name: &str, corr: Option<&str>) -> Option<Finding> {
        let Some(event) = EventType::parse(type_name) else {
            return Some(Finding {
                anomaly: INVALID_EVENT,
                detail: format!("\"{type_name}\" is not a workflow event type; no consumer will accept it"),
            });
        };
        match (event.correlation_rule(), corr) {
            (CorrelationRule::Required, None) => {
                return Some(Finding {
                    anomaly: INVALID_EVENT,
                    detail: format!("{event} has no correlation id, so it belongs to no {}", event.kind()),
                })
            }
            (CorrelationRule::Forbidden, Some(c)) => {
                return Some(Finding {
                    anomaly: INVALID_EVENT,
                    detail: format!("{event} is a run-level event but carries correlation id \"{c}\""),
                })
            }
            _ => {}
        }
        // The writer's argument rules (empty or over-long ids) apply too.
        if let Err(e) = validate::optional_ident("correlation_id", corr) {
            return Some(Finding { anomaly: INVALID_EVENT, detail: e.message() });
        }

        let run_state = self.run.map(|r| r.state);
        if event == EventType::RunCreated && self.run.is_none() && self.events > 1 {
            // Events before it were reported as missing_run_created; accept
            // it as the run's creation so what follows is judged normally.
            self.run = Some(Entity { state: State::RunPending, since: position, created: position });
            return Some(Finding {
                anomaly: RUN_CREATED_NOT_FIRST,
                detail: format!(
                    "run_created is event {} of the run; it must be the first",
                    self.events
                ),
            });
        }

        let entity = match (event.kind(), corr) {
            (EntityKind::Run, _) | (_, None) => None,
            (kind, Some(c)) => self.entities.get(c).and_then(|slots| slots[slot(kind)]),
        };

        if let Err(v) = lifecycle::check(run_state, entity.map(|e| e.state), event) {
            return Some(Finding { anomaly: v.code(), detail: self.explain(v, event, corr, entity) });
        }

        // Accepted: advance exactly as the writer would have.
        if event.kind() == EntityKind::Run {
            let after = lifecycle::run_state_after(run_state, event);
            if after != run_state {
                if let Some(state) = after {
                    let created = self.run.map_or(position, |r| r.created);
                    self.run = Some(Entity { state, since: position, created });
                }
            }
        } else if let (Some(c), Some(state)) = (corr, lifecycle::entity_state_after(event)) {
            let i = slot(event.kind());
            // Look up by &str first: allocate the key only for a new entity.
            match self.entities.get_mut(c) {
                Some(slots) => {
                    let created = slots[i].map_or(position, |e| e.created);
                    slots[i] = Some(Entity { state, since: position, created });
                }
                None => {
                    let mut slots = [None; 3];
                    slots[i] = Some(Entity { state, since: position, created: position });
                    self.entities.insert(c.to_string(), slots);
                }
            }
        }
        None
    }

    /// A sentence a person can act on.
    fn explain(&self, v: Violation, event: EventType, corr: Option<&str>, entity: Option<Entity>) -> String {
        let what = match corr {
            Some(c) if event.kind() != EntityKind::Run => format!("{} \"{c}\"", event.kind()),
            _ => "the run".to_string(),
        };
        match v {
            Violation::MissingRunCreated => {
                format!("{event} before any run_created: the run was never created")
            }
            Violation::DuplicateCreation => {
                let at = entity.or(self.run).map_or(0, |e| e.created);
                format!(
                    "{what} was already created at position {at}; a replay has no consumer for this \
                     second {event} (\"Unconsumed event in event log\")"
                )
            }
            Violation::MissingCreation => {
                format!("{event} for {what}, which was never created (no {}_created before it)", event.kind())
            }
            Violation::EventAfterTerminal { state } => {
                let at = match event.kind() {
                    EntityKind::Run => self.run.map_or(0, |r| r.since),
                    _ => entity.map_or(0, |e| e.since),
                };
                format!("{event} after {what} was already {state} at position {at}")
            }
            Violation::EventAfterRunTerminal { run_state } => format!(
                "{event} for {what} after the run was {run_state} at position {}: nothing new may \
                 be created or started on a finished run",
                self.run.map_or(0, |r| r.since)
            ),
            Violation::IllegalTransition { state } => {
                format!("{event} is not allowed while {what} is {state}")
            }
        }
    }

    /// Distinct entities remembered: the auditor's memory, for the tests.
    pub fn entities_remembered(&self) -> usize {
        self.entities.values().map(|s| s.iter().flatten().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator, so failures reproduce by seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    type Event = (EventType, Option<String>);

    const CORRS: [&str; 5] = ["s1", "s2", "w1", "h1", "h2"];

    /// A random history the writer would accept: at each step, one of the
    /// (type, correlation id) pairs that lifecycle::check allows in the
    /// model state, chosen uniformly, so deep lifecycles are common.
    fn valid_history(rng: &mut Rng, len: usize) -> Vec<Event> {
        let mut model = Auditor::new();
        let mut log = vec![(EventType::RunCreated, None)];
        assert!(model.feed(1, Some(1), "run_created", None).is_empty());
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
                    if probe.feed(pos, Some(pos), t.as_str(), c).is_empty() {
                        legal.push((t, c.map(str::to_string)));
                    }
                }
            }
            if legal.is_empty() {
                break;
            }
            let (t, c) = legal.swap_remove(rng.below(legal.len()));
            assert!(model.feed(pos, Some(pos), t.as_str(), c.as_deref()).is_empty());
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
            for f in a.feed(pos, seq, t.as_str(), c.as_deref()) {
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
            // Duplicate an entity creation at the end (#2039).
            if let Some(i) = log.iter().position(|(t, _)| t.is_suspension() && *t != EventType::RunCreated) {
                let mut bad = log.clone();
                bad.push(log[i].clone());
                assert_eq!(audit(&bad, None), vec![(n as i64 + 1, "duplicate_creation")], "seed {seed}");
                *checked.entry("duplicate_creation").or_insert(0) += 1;
            }
            // A second run_created (#2983).
            let mut bad = log.clone();
            bad.insert(n / 2 + 1, (EventType::RunCreated, None));
            assert_eq!(audit(&bad, None), vec![(n as i64 / 2 + 2, "duplicate_creation")], "seed {seed}");
            // A late start after a completed step (#2331).
            if let Some(i) = log.iter().position(|(t, _)| *t == EventType::StepCompleted) {
                let mut bad = log.clone();
                bad.push((EventType::StepStarted, log[i].1.clone()));
                let got = audit(&bad, None);
                assert_eq!(got.len(), 1, "seed {seed}: {got:?}");
                assert_eq!(got[0].0, n as i64 + 1);
                assert!(["event_after_terminal"].contains(&got[0].1), "seed {seed}: {got:?}");
                *checked.entry("event_after_terminal").or_insert(0) += 1;
            }
            // An event for an entity never created.
            let mut bad = log.clone();
            bad.push((EventType::StepStarted, Some("never".into())));
            assert_eq!(audit(&bad, None), vec![(n as i64 + 1, "missing_creation")], "seed {seed}");
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
                assert_eq!(audit(&log, Some(&dup)), vec![(3, SEQ_DUPLICATE)], "seed {seed}");
            }
        }
        for code in ["duplicate_creation", "event_after_terminal", RUN_CREATED_NOT_FIRST] {
            assert!(checked.get(code).copied().unwrap_or(0) > 100, "{code} checked too rarely: {checked:?}");
        }
    }

    #[test]
    fn each_code_has_its_example() {
        use EventType as E;
        let r = |t: EventType| (t, None::<String>);
        let s = |t: EventType, c: &str| (t, Some(c.to_string()));
        let cases: Vec<(Vec<Event>, (i64, &str))> = vec![
            (vec![r(E::RunCreated), r(E::RunCreated)], (2, "duplicate_creation")),
            (vec![r(E::RunStarted)], (1, "missing_run_created")),
            (vec![s(E::StepCreated, "a"), r(E::RunCreated)], (2, RUN_CREATED_NOT_FIRST)),
            (vec![r(E::RunCreated), s(E::StepStarted, "a")], (2, "missing_creation")),
            (
                vec![r(E::RunCreated), r(E::RunStarted), s(E::StepCreated, "a"), s(E::StepStarted, "a"),
                     s(E::StepCompleted, "a"), s(E::StepStarted, "a")],
                (6, "event_after_terminal"),
            ),
            (
                vec![r(E::RunCreated), r(E::RunCancelled), s(E::StepCreated, "a")],
                (3, "event_after_run_terminal"),
            ),
            (vec![r(E::RunCreated), s(E::StepCreated, "a"), s(E::StepRetrying, "a")], (3, "illegal_transition")),
            (vec![r(E::RunCreated), s(E::StepCreated, "")], (2, INVALID_EVENT)),
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
        assert_eq!(a.feed(1, None, "run_created", None), vec![]);
        assert_eq!(a.feed(2, None, "step_exploded", Some("a"))[0].anomaly, INVALID_EVENT);
        assert_eq!(a.feed(3, None, "step_created", None)[0].anomaly, INVALID_EVENT);
    }

    #[test]
    fn memory_grows_with_entities_not_events() {
        let mut a = Auditor::new();
        a.feed(1, Some(1), "run_created", None);
        a.feed(2, Some(2), "run_started", None);
        a.feed(3, Some(3), "hook_created", Some("h"));
        for i in 4..100_000 {
            assert!(a.feed(i, Some(i), "hook_received", Some("h")).is_empty());
        }
        assert_eq!(a.entities_remembered(), 1);
    }
}
