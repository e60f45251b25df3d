//! The workflow lifecycle state machine: pure Rust, no SPI, no pgrx.
//!
//! Every rule about which event may follow which lives here and only here.
//! The write path (`crate::write::core`, via the events trigger) asks [`check`] before a
//! row is stored; the replay audit asks the same function while it streams a
//! stored log. Because both use one function, nothing the writer refuses can
//! replay clean and nothing it accepts can be reported.
//!
//! Entity state is a pure function of the entity's last accepted event
//! ([`entity_state_after`]), so the writer derives it from the log itself and
//! keeps no second copy that could drift.
//!
//! "Spec N" below is the DevKit's event-log version (its `spec_version`
//! column): spec 3 is @workflow/world-postgres 4.x, spec 5 adds `attr_set` and
//! `noop` (5.0), spec 7 uses `noop` as the sealed log's filler.

use std::fmt;

/// The full event vocabulary of the Workflow DevKit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    RunCreated,
    RunStarted,
    RunCompleted,
    RunFailed,
    RunCancelled,
    StepCreated,
    StepStarted,
    StepRetrying,
    StepCompleted,
    StepFailed,
    WaitCreated,
    WaitCompleted,
    HookCreated,
    HookReceived,
    HookDisposed,
    HookConflict,
    AttrSet,
    /// Spec 7's sealed-log filler: written by the World's backend for a
    /// position whose writer died before committing. It occupies its place
    /// in the log and means nothing to the lifecycle.
    Noop,
}

/// What an event is about: the run itself, or one entity inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Run,
    Step,
    Wait,
    Hook,
    /// A keyed attribute: `attr_set` with a correlation id (spec 5), which
    /// resolves once.
    Attr,
}

/// Whether an event type carries a correlation id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrelationRule {
    /// Run lifecycle events: the correlation id must be NULL.
    Forbidden,
    /// Entity events: the correlation id names the entity.
    Required,
    /// `attr_set` (may name the attribute, or be NULL) and `noop`.
    Optional,
}

impl EventType {
    /// Every event type, in the order of the SQL enum `workflow_ext.event_type`.
    pub const ALL: [EventType; 18] = [
        EventType::RunCreated,
        EventType::RunStarted,
        EventType::RunCompleted,
        EventType::RunFailed,
        EventType::RunCancelled,
        EventType::StepCreated,
        EventType::StepStarted,
        EventType::StepRetrying,
        EventType::StepCompleted,
        EventType::StepFailed,
        EventType::WaitCreated,
        EventType::WaitCompleted,
        EventType::HookCreated,
        EventType::HookReceived,
        EventType::HookDisposed,
        EventType::HookConflict,
        EventType::AttrSet,
        EventType::Noop,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::RunCreated => "run_created",
            EventType::RunStarted => "run_started",
            EventType::RunCompleted => "run_completed",
            EventType::RunFailed => "run_failed",
            EventType::RunCancelled => "run_cancelled",
            EventType::StepCreated => "step_created",
            EventType::StepStarted => "step_started",
            EventType::StepRetrying => "step_retrying",
            EventType::StepCompleted => "step_completed",
            EventType::StepFailed => "step_failed",
            EventType::WaitCreated => "wait_created",
            EventType::WaitCompleted => "wait_completed",
            EventType::HookCreated => "hook_created",
            EventType::HookReceived => "hook_received",
            EventType::HookDisposed => "hook_disposed",
            EventType::HookConflict => "hook_conflict",
            EventType::AttrSet => "attr_set",
            EventType::Noop => "noop",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub const fn kind(self) -> EntityKind {
        match self {
            EventType::RunCreated
            | EventType::RunStarted
            | EventType::RunCompleted
            | EventType::RunFailed
            | EventType::RunCancelled
            | EventType::AttrSet
            | EventType::Noop => EntityKind::Run,
            EventType::StepCreated
            | EventType::StepStarted
            | EventType::StepRetrying
            | EventType::StepCompleted
            | EventType::StepFailed => EntityKind::Step,
            EventType::WaitCreated | EventType::WaitCompleted => EntityKind::Wait,
            EventType::HookCreated
            | EventType::HookReceived
            | EventType::HookDisposed
            | EventType::HookConflict => EntityKind::Hook,
        }
    }

    /// The creations a suspension appends: `append_suspension_event`'s
    /// types, each unique per run and correlation id.
    pub const SUSPENSIONS: [EventType; 4] = [
        EventType::RunCreated,
        EventType::StepCreated,
        EventType::WaitCreated,
        EventType::HookCreated,
    ];

    /// The creation index's name: a duplicate's 23505 names it, and the
    /// DevKit's world-postgres maps exactly that name to its benign
    /// "already exists" error.
    pub const CREATION_INDEX: &'static str = "workflow_events_entity_creation_unique";

    /// What the creation index `workflow_events_entity_creation_unique`
    /// makes unique: the suspensions, then the keyed `attr_set`.
    pub const UNIQUE_CREATIONS: [EventType; 5] = [
        Self::SUSPENSIONS[0],
        Self::SUSPENSIONS[1],
        Self::SUSPENSIONS[2],
        Self::SUSPENSIONS[3],
        EventType::AttrSet,
    ];

    /// The events that end a run. Each also releases the hook tokens the
    /// run's hooks hold (with `hook_disposed`, which releases its own).
    pub const RUN_TERMINALS: [EventType; 3] = [
        EventType::RunCompleted,
        EventType::RunFailed,
        EventType::RunCancelled,
    ];

    pub const fn ends_run(self) -> bool {
        let mut i = 0;
        while i < Self::RUN_TERMINALS.len() {
            if Self::RUN_TERMINALS[i] as u8 == self as u8 {
                return true;
            }
            i += 1;
        }
        false
    }

    pub const fn is_suspension(self) -> bool {
        let mut i = 0;
        while i < Self::SUSPENSIONS.len() {
            if Self::SUSPENSIONS[i] as u8 == self as u8 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// What the event is about, knowing whether it has a correlation id:
    /// `attr_set` with one names an attribute of the run (an entity of its
    /// own, set once); every other type's kind is fixed.
    pub const fn entity_kind(self, keyed: bool) -> EntityKind {
        match self {
            EventType::AttrSet if keyed => EntityKind::Attr,
            _ => self.kind(),
        }
    }

    /// Creations that may exist once per run and correlation id: the
    /// suspension events and a keyed `attr_set` (spec 5), exactly what the
    /// index `workflow_events_entity_creation_unique` covers.
    pub const fn is_unique_creation(self, keyed: bool) -> bool {
        self.is_suspension() || matches!((self, keyed), (EventType::AttrSet, true))
    }

    /// Events that bring an entity into existence. `hook_conflict` does too
    /// (a hook whose token was taken is born in its terminal state), but it is
    /// not a suspension event and is not covered by the unique index.
    pub const fn creates_entity(self) -> bool {
        matches!(
            self,
            EventType::StepCreated
                | EventType::WaitCreated
                | EventType::HookCreated
                | EventType::HookConflict
        )
    }

    pub const fn correlation_rule(self) -> CorrelationRule {
        match self.kind() {
            EntityKind::Run if matches!(self, EventType::AttrSet | EventType::Noop) => {
                CorrelationRule::Optional
            }
            EntityKind::Run => CorrelationRule::Forbidden,
            _ => CorrelationRule::Required,
        }
    }

    /// Events refused once the run has finished: nothing new may be created
    /// or started. Terminals of steps that were already running still count.
    const fn is_refused_after_run_terminal(self) -> bool {
        matches!(
            self,
            EventType::StepCreated
                | EventType::WaitCreated
                | EventType::HookCreated
                | EventType::HookConflict
                | EventType::StepStarted
                | EventType::HookReceived
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EntityKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EntityKind::Run => "run",
            EntityKind::Step => "step",
            EntityKind::Wait => "wait",
            EntityKind::Hook => "hook",
            EntityKind::Attr => "attribute",
        }
    }

    /// The entity kinds that have correlation ids, in slot order.
    pub const ENTITIES: [EntityKind; 4] = [
        EntityKind::Step,
        EntityKind::Wait,
        EntityKind::Hook,
        EntityKind::Attr,
    ];

    /// This kind's slot in per-entity arrays (`ENTITIES` order); `None` for
    /// the run, which has no correlation id.
    pub const fn index(self) -> Option<usize> {
        match self {
            EntityKind::Run => None,
            EntityKind::Step => Some(0),
            EntityKind::Wait => Some(1),
            EntityKind::Hook => Some(2),
            EntityKind::Attr => Some(3),
        }
    }

    /// The event types that belong to an entity of this kind (an attribute's
    /// is its keyed `attr_set`).
    pub fn event_types(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| t.entity_kind(self == EntityKind::Attr) == self)
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a run or of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    RunPending,
    RunRunning,
    RunCompleted,
    RunFailed,
    RunCancelled,
    StepPending,
    StepRunning,
    StepCompleted,
    StepFailed,
    WaitWaiting,
    WaitCompleted,
    HookActive,
    HookDisposed,
    HookConflict,
    /// A keyed attribute, once set (terminal: spec 5 has no consumer for a
    /// second value).
    AttrSet,
}

impl State {
    pub const ALL: [State; 15] = [
        State::RunPending,
        State::RunRunning,
        State::RunCompleted,
        State::RunFailed,
        State::RunCancelled,
        State::StepPending,
        State::StepRunning,
        State::StepCompleted,
        State::StepFailed,
        State::WaitWaiting,
        State::WaitCompleted,
        State::HookActive,
        State::HookDisposed,
        State::HookConflict,
        State::AttrSet,
    ];

    pub const fn kind(self) -> EntityKind {
        match self {
            State::RunPending
            | State::RunRunning
            | State::RunCompleted
            | State::RunFailed
            | State::RunCancelled => EntityKind::Run,
            State::StepPending | State::StepRunning | State::StepCompleted | State::StepFailed => {
                EntityKind::Step
            }
            State::WaitWaiting | State::WaitCompleted => EntityKind::Wait,
            State::HookActive | State::HookDisposed | State::HookConflict => EntityKind::Hook,
            State::AttrSet => EntityKind::Attr,
        }
    }

    /// The label stored in `workflow_ext.runs.state` and shown in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::RunPending | State::StepPending => "pending",
            State::RunRunning | State::StepRunning => "running",
            State::RunCompleted | State::StepCompleted | State::WaitCompleted => "completed",
            State::RunFailed | State::StepFailed => "failed",
            State::RunCancelled => "cancelled",
            State::WaitWaiting => "waiting",
            State::HookActive => "active",
            State::HookDisposed => "disposed",
            State::HookConflict => "conflict",
            State::AttrSet => "set",
        }
    }

    pub fn parse(kind: EntityKind, s: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|st| st.kind() == kind && st.as_str() == s)
    }

    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            State::RunCompleted
                | State::RunFailed
                | State::RunCancelled
                | State::StepCompleted
                | State::StepFailed
                | State::WaitCompleted
                | State::HookDisposed
                | State::HookConflict
                | State::AttrSet
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event may not follow the current state. Each variant is one
/// anomaly code of the replay audit and one SQLSTATE of the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An event for a run that has no `run_created`.
    MissingRunCreated,
    /// A second creation event for the same run, or the same entity.
    DuplicateCreation,
    /// An entity event for an entity that was never created.
    MissingCreation,
    /// An event for an entity (or the run) after its terminal event.
    EventAfterTerminal { state: State },
    /// A creation or start after the run finished.
    EventAfterRunTerminal { run_state: State },
    /// Any other move the lifecycle forbids.
    IllegalTransition { state: State },
}

impl Violation {
    /// The verdict of [`check`], which cannot tell a keyed `attr_set` from
    /// an unkeyed one when the attribute does not exist, restated for the
    /// event as addressed. After the run's terminal a keyed `attr_set` is
    /// the creation of an attribute, refused as every creation is
    /// (`event_after_run_terminal`), not an event of an attribute that never
    /// existed. Every other verdict is returned as it is.
    pub const fn for_address(self, event: EventType, keyed: bool) -> Violation {
        match (self, event, keyed) {
            (Violation::EventAfterTerminal { state }, EventType::AttrSet, true)
                if matches!(state.kind(), EntityKind::Run) =>
            {
                Violation::EventAfterRunTerminal { run_state: state }
            }
            (v, _, _) => v,
        }
    }

    /// The violation an anomaly code names ([`Violation::code`]); the state
    /// a variant carries is not part of the code, and is a placeholder here.
    pub fn from_code(code: &str) -> Option<Violation> {
        let placeholder = State::RunPending;
        [
            Violation::MissingRunCreated,
            Violation::DuplicateCreation,
            Violation::MissingCreation,
            Violation::EventAfterTerminal { state: placeholder },
            Violation::EventAfterRunTerminal {
                run_state: placeholder,
            },
            Violation::IllegalTransition { state: placeholder },
        ]
        .into_iter()
        .find(|v| v.code() == code)
    }

    /// The stable anomaly code, shared by error details and `replay` rows.
    pub const fn code(self) -> &'static str {
        match self {
            Violation::MissingRunCreated => "missing_run_created",
            Violation::DuplicateCreation => "duplicate_creation",
            Violation::MissingCreation => "missing_creation",
            Violation::EventAfterTerminal { .. } => "event_after_terminal",
            Violation::EventAfterRunTerminal { .. } => "event_after_run_terminal",
            Violation::IllegalTransition { .. } => "illegal_transition",
        }
    }
}

/// The state an entity is in after `event` was accepted for it. Defined for
/// entity events only (steps, waits, hooks, and the keyed `attr_set` of an
/// attribute); `None` for run-level events.
pub const fn entity_state_after(event: EventType) -> Option<State> {
    Some(match event {
        EventType::StepCreated | EventType::StepRetrying => State::StepPending,
        EventType::StepStarted => State::StepRunning,
        EventType::StepCompleted => State::StepCompleted,
        EventType::StepFailed => State::StepFailed,
        EventType::WaitCreated => State::WaitWaiting,
        EventType::WaitCompleted => State::WaitCompleted,
        EventType::HookCreated | EventType::HookReceived => State::HookActive,
        EventType::HookDisposed => State::HookDisposed,
        EventType::HookConflict => State::HookConflict,
        EventType::AttrSet => State::AttrSet,
        _ => return None,
    })
}

/// The run's state after a run-level event was accepted in state `run`
/// (`None`: no run yet). `attr_set`, `noop` and a repeated `run_cancelled`
/// leave the state as it was.
pub fn run_state_after(run: Option<State>, event: EventType) -> Option<State> {
    match event {
        EventType::RunCreated => Some(State::RunPending),
        EventType::RunStarted => Some(State::RunRunning),
        EventType::RunCompleted => Some(State::RunCompleted),
        EventType::RunFailed => Some(State::RunFailed),
        EventType::RunCancelled => Some(State::RunCancelled),
        _ => run,
    }
}

/// Decides whether `event` may be appended.
///
/// * `run`: the run's current state, `None` when the run has no `run_created`.
/// * `entity`: for entity events, the state of the entity of the event's
///   [`EventType::entity_kind`] and correlation id (`None` when it was never
///   created); for a keyed `attr_set`, its attribute's; `None` for other
///   run-level events.
///
/// Checks run in a fixed order, so every refused event gets exactly one
/// reason: missing run, duplicate creation, missing entity, entity already
/// terminal, run already terminal, then the transition table.
///
/// A keyed `attr_set` whose attribute does not exist gets the verdict of an
/// unkeyed one here; [`check_addressed`] (or [`Violation::for_address`] on
/// the verdict) names it as the creation it is.
pub fn check(run: Option<State>, entity: Option<State>, event: EventType) -> Result<(), Violation> {
    use EventType as E;
    use State as S;

    if event == E::RunCreated {
        return match run {
            Some(_) => Err(Violation::DuplicateCreation),
            None => Ok(()),
        };
    }
    let Some(run) = run else {
        return Err(Violation::MissingRunCreated);
    };

    if event.kind() == EntityKind::Run {
        return match (event, run) {
            // The sealed log's filler occupies a position in any run state.
            (E::Noop, _) => Ok(()),
            // A keyed attribute resolves once (spec 5).
            (E::AttrSet, _) if entity.is_some() => Err(Violation::DuplicateCreation),
            // The DevKit treats cancelling a cancelled run as a no-op.
            (E::RunCancelled, S::RunCancelled) => Ok(()),
            (_, state) if state.is_terminal() => Err(Violation::EventAfterTerminal { state }),
            (E::RunStarted, S::RunPending)
            | (E::RunCompleted | E::RunFailed, S::RunRunning)
            | (E::RunCancelled, S::RunPending | S::RunRunning)
            | (E::AttrSet, _) => Ok(()),
            (_, state) => Err(Violation::IllegalTransition { state }),
        };
    }

    if event.creates_entity() {
        return match entity {
            // A hook born in conflict, or a conflict reported for an existing
            // hook, is not a second copy of the same creation (the unique
            // index would not catch it): after the hook ended it is an event
            // after its terminal, like any other; on a live hook it is an
            // illegal move.
            Some(state) if event == E::HookConflict || state == S::HookConflict => {
                if state.is_terminal() {
                    Err(Violation::EventAfterTerminal { state })
                } else {
                    Err(Violation::IllegalTransition { state })
                }
            }
            Some(_) => Err(Violation::DuplicateCreation),
            None if run.is_terminal() => Err(Violation::EventAfterRunTerminal { run_state: run }),
            None => Ok(()),
        };
    }

    let Some(state) = entity else {
        return Err(Violation::MissingCreation);
    };
    if state.is_terminal() {
        return Err(Violation::EventAfterTerminal { state });
    }
    if run.is_terminal() && event.is_refused_after_run_terminal() {
        return Err(Violation::EventAfterRunTerminal { run_state: run });
    }
    match (event, state) {
        (E::StepStarted, S::StepPending)
        | (E::StepRetrying | E::StepCompleted | E::StepFailed, S::StepRunning)
        | (E::WaitCompleted, S::WaitWaiting)
        | (E::HookReceived | E::HookDisposed, S::HookActive) => Ok(()),
        _ => Err(Violation::IllegalTransition { state }),
    }
}

/// [`check`] for an event whose correlation id is known to be present
/// (`keyed`) or not: the verdict as the writer reports it.
pub fn check_addressed(
    run: Option<State>,
    entity: Option<State>,
    event: EventType,
    keyed: bool,
) -> Result<(), Violation> {
    check(run, entity, event).map_err(|v| v.for_address(event, keyed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventType as E;
    use State as S;

    #[test]
    fn vocabulary_round_trips() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        for s in State::ALL {
            assert_eq!(State::parse(s.kind(), s.as_str()), Some(s));
        }
        assert_eq!(EventType::parse("step_create"), None);
        assert_eq!(
            EventType::ALL.iter().filter(|t| t.is_suspension()).count(),
            4
        );
    }

    #[test]
    fn entity_states_follow_their_kind() {
        for t in EventType::ALL {
            match entity_state_after(t) {
                Some(s) => assert_eq!(s.kind(), t.entity_kind(true), "{t}"),
                None => assert_eq!(t.kind(), EntityKind::Run, "{t}"),
            }
        }
    }

    /// The expected verdict for every run-level event in every run state,
    /// written out as a table so a change to the rules shows up here.
    #[test]
    fn run_transition_matrix() {
        let ok = Ok(());
        let after = |state| Err(Violation::EventAfterTerminal { state });
        let illegal = |state| Err(Violation::IllegalTransition { state });
        #[rustfmt::skip]
        let table: Vec<(Option<State>, EventType, Result<(), Violation>)> = vec![
            (None, E::RunCreated, ok),
            (None, E::RunStarted, Err(Violation::MissingRunCreated)),
            (None, E::RunCancelled, Err(Violation::MissingRunCreated)),
            (None, E::AttrSet, Err(Violation::MissingRunCreated)),
            (Some(S::RunPending), E::RunCreated, Err(Violation::DuplicateCreation)),
            (Some(S::RunPending), E::RunStarted, ok),
            (Some(S::RunPending), E::RunCompleted, illegal(S::RunPending)),
            (Some(S::RunPending), E::RunFailed, illegal(S::RunPending)),
            (Some(S::RunPending), E::RunCancelled, ok),
            (Some(S::RunPending), E::AttrSet, ok),
            (Some(S::RunRunning), E::RunStarted, illegal(S::RunRunning)),
            (Some(S::RunRunning), E::RunCompleted, ok),
            (Some(S::RunRunning), E::RunFailed, ok),
            (Some(S::RunRunning), E::RunCancelled, ok),
            (Some(S::RunRunning), E::AttrSet, ok),
            (Some(S::RunCompleted), E::RunCreated, Err(Violation::DuplicateCreation)),
            (Some(S::RunCompleted), E::RunStarted, after(S::RunCompleted)),
            (Some(S::RunCompleted), E::RunCompleted, after(S::RunCompleted)),
            (Some(S::RunCompleted), E::RunCancelled, after(S::RunCompleted)),
            (Some(S::RunCompleted), E::AttrSet, after(S::RunCompleted)),
            (Some(S::RunFailed), E::RunFailed, after(S::RunFailed)),
            (Some(S::RunCancelled), E::RunCancelled, ok),
            (Some(S::RunCancelled), E::RunStarted, after(S::RunCancelled)),
            (None, E::Noop, Err(Violation::MissingRunCreated)),
            (Some(S::RunPending), E::Noop, ok),
            (Some(S::RunRunning), E::Noop, ok),
            (Some(S::RunCompleted), E::Noop, ok),
            (Some(S::RunCancelled), E::Noop, ok),
        ];
        for (run, event, expected) in table {
            assert_eq!(check(run, None, event), expected, "{event} in {run:?}");
        }
    }

    /// Every entity event × every entity state (plus "never created") ×
    /// a live and a finished run.
    #[test]
    fn entity_transition_matrix() {
        let entity_events: Vec<EventType> = EventType::ALL
            .into_iter()
            .filter(|t| t.kind() != EntityKind::Run)
            .collect();
        for run in [S::RunRunning, S::RunCompleted] {
            for event in &entity_events {
                let event = *event;
                let states = std::iter::once(None).chain(
                    State::ALL
                        .into_iter()
                        .filter(|s| s.kind() == event.kind())
                        .map(Some),
                );
                for entity in states {
                    let got = check(Some(run), entity, event);
                    let expected = expected_entity_verdict(run, entity, event);
                    assert_eq!(got, expected, "{event} on {entity:?} in run {run}");
                }
            }
        }
    }

    /// The rules of ../shared/reference/event-model.md, restated as a
    /// second, independent reading for the matrix test.
    fn expected_entity_verdict(
        run: State,
        entity: Option<State>,
        event: EventType,
    ) -> Result<(), Violation> {
        let allowed: &[(EventType, State)] = &[
            (E::StepStarted, S::StepPending),
            (E::StepRetrying, S::StepRunning),
            (E::StepCompleted, S::StepRunning),
            (E::StepFailed, S::StepRunning),
            (E::WaitCompleted, S::WaitWaiting),
            (E::HookReceived, S::HookActive),
            (E::HookDisposed, S::HookActive),
        ];
        let run_done = run.is_terminal();
        match entity {
            None if event.creates_entity() && run_done => {
                Err(Violation::EventAfterRunTerminal { run_state: run })
            }
            None if event.creates_entity() => Ok(()),
            None => Err(Violation::MissingCreation),
            // hook_conflict is no copy of hook_created: on a live hook it is
            // illegal, on an ended one (disposed, or born in conflict) it
            // comes after the terminal, as does every event for that hook.
            Some(state) if event == E::HookConflict && !state.is_terminal() => {
                Err(Violation::IllegalTransition { state })
            }
            Some(state) if event == E::HookConflict || state == S::HookConflict => {
                Err(Violation::EventAfterTerminal { state })
            }
            Some(_) if event.creates_entity() => Err(Violation::DuplicateCreation),
            Some(state) if state.is_terminal() => Err(Violation::EventAfterTerminal { state }),
            Some(_) if run_done && matches!(event, E::StepStarted | E::HookReceived) => {
                Err(Violation::EventAfterRunTerminal { run_state: run })
            }
            Some(state) if allowed.contains(&(event, state)) => Ok(()),
            Some(state) => Err(Violation::IllegalTransition { state }),
        }
    }

    #[test]
    fn devkit_exceptions() {
        // A running step may still record its terminal after the run ended.
        assert_eq!(
            check(
                Some(S::RunCancelled),
                Some(S::StepRunning),
                E::StepCompleted
            ),
            Ok(())
        );
        assert_eq!(
            check(Some(S::RunFailed), Some(S::StepRunning), E::StepFailed),
            Ok(())
        );
        // A second run_cancelled is a no-op, and leaves the state as it was.
        assert_eq!(check(Some(S::RunCancelled), None, E::RunCancelled), Ok(()));
        assert_eq!(
            run_state_after(Some(S::RunCancelled), E::RunCancelled),
            Some(S::RunCancelled)
        );
        assert_eq!(
            run_state_after(Some(S::RunRunning), E::AttrSet),
            Some(S::RunRunning)
        );
    }

    /// Spec 5: `attr_set` with a correlation id is an attribute written
    /// once; without one it may repeat; both only before the run's terminal.
    /// `noop` never changes a state.
    #[test]
    fn keyed_attributes_resolve_once() {
        assert_eq!(E::AttrSet.entity_kind(true), EntityKind::Attr);
        assert_eq!(E::AttrSet.entity_kind(false), EntityKind::Run);
        assert!(E::AttrSet.is_unique_creation(true));
        assert!(!E::AttrSet.is_unique_creation(false));
        assert!(!E::Noop.is_unique_creation(true));
        let kinds: Vec<_> = EntityKind::Attr.event_types().collect();
        assert_eq!(kinds, vec![E::AttrSet]);
        assert!(EntityKind::Run.event_types().any(|t| t == E::Noop));
        for run in [S::RunPending, S::RunRunning] {
            assert_eq!(check(Some(run), None, E::AttrSet), Ok(()));
            assert_eq!(
                check(Some(run), Some(S::AttrSet), E::AttrSet),
                Err(Violation::DuplicateCreation)
            );
        }
        assert_eq!(
            check(Some(S::RunCompleted), Some(S::AttrSet), E::AttrSet),
            Err(Violation::DuplicateCreation)
        );
        assert_eq!(
            check(Some(S::RunFailed), None, E::AttrSet),
            Err(Violation::EventAfterTerminal {
                state: S::RunFailed
            })
        );
        // After the run's terminal a keyed attr_set is a late creation, as a
        // step_created is; an unkeyed one an event of the run.
        for run in [S::RunCompleted, S::RunFailed, S::RunCancelled] {
            assert_eq!(
                check_addressed(Some(run), None, E::AttrSet, true),
                Err(Violation::EventAfterRunTerminal { run_state: run })
            );
            assert_eq!(
                check_addressed(Some(run), None, E::AttrSet, true),
                check_addressed(Some(run), None, E::StepCreated, true)
            );
            assert_eq!(
                check_addressed(Some(run), None, E::AttrSet, false),
                Err(Violation::EventAfterTerminal { state: run })
            );
            assert_eq!(
                check_addressed(Some(run), Some(S::AttrSet), E::AttrSet, true),
                Err(Violation::DuplicateCreation)
            );
        }
        // Every other verdict is the same keyed or not.
        for run in State::ALL
            .into_iter()
            .filter(|s| s.kind() == EntityKind::Run)
        {
            for event in EventType::ALL.into_iter().filter(|t| *t != E::AttrSet) {
                for keyed in [false, true] {
                    assert_eq!(
                        check_addressed(Some(run), None, event, keyed),
                        check(Some(run), None, event),
                        "{event} in {run}"
                    );
                }
            }
        }
        assert_eq!(entity_state_after(E::AttrSet), Some(S::AttrSet));
        assert!(S::AttrSet.is_terminal());
        for run in State::ALL
            .into_iter()
            .filter(|s| s.kind() == EntityKind::Run)
        {
            assert_eq!(run_state_after(Some(run), E::Noop), Some(run));
        }
        assert_eq!(entity_state_after(E::Noop), None);
    }

    #[test]
    fn the_seed_shapes_are_refused() {
        // vercel/workflow#2039: a second step_created after the step completed.
        assert_eq!(
            check(Some(S::RunRunning), Some(S::StepCompleted), E::StepCreated),
            Err(Violation::DuplicateCreation)
        );
        // vercel/workflow#2331: a late step_started after step_completed.
        assert_eq!(
            check(Some(S::RunRunning), Some(S::StepCompleted), E::StepStarted),
            Err(Violation::EventAfterTerminal {
                state: S::StepCompleted
            })
        );
        // step_retrying while pending.
        assert_eq!(
            check(Some(S::RunRunning), Some(S::StepPending), E::StepRetrying),
            Err(Violation::IllegalTransition {
                state: S::StepPending
            })
        );
    }
}
