//! One fold of a run's events into its state, by the writer's rules: the
//! run's state, each entity's state, and the hook tokens its active hooks
//! hold. An event the rules refuse changes nothing, exactly as the writer
//! would not have stored it, so what follows is judged as the writer judged
//! it.
//!
//! Its users: the replay auditor ([`crate::audit::auditor`], which adds the
//! seq checks and the explanations), attach's seeding of a run's state
//! ([`crate::features::attach`]) and the monitoring's active entities
//! ([`crate::features::metrics`]). The writer itself decides one event at
//! a time from the stored log under the run's lock
//! ([`crate::write::core`]), by the same [`lifecycle::check`].

use crate::rules::lifecycle::{self, EntityKind, EventType, State, Violation};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: correlation ids are short keys in a map that lives for one run;
/// SipHash's DoS resistance buys nothing here (the map holds one run, and
/// every loop over it checks for interrupts) and cost a tenth of replay
/// time.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// What the fold remembers of the run or of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entity {
    pub state: State,
    /// Position of the event that put it in `state`.
    pub since: i64,
    /// Position of its creation.
    pub created: i64,
}

/// Why an event changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The lifecycle refuses it ([`lifecycle::check_addressed`]).
    Lifecycle(Violation),
    /// A hook_created whose token an active hook of the run holds.
    TokenHeld { token: String, holder: String },
}

/// The state a run's events leave it in. Memory: one map entry per entity
/// (its key, [`entity_key`], stored once) and one per held token; never
/// one per event.
#[derive(Clone, Default)]
pub struct RunFold {
    run: Option<Entity>,
    /// Every entity of the run, keyed by [`entity_key`]: one map for all
    /// kinds, since a correlation id almost always names one entity.
    entities: FnvMap<Box<str>, Entity>,
    /// The buffer [`entity_key`] builds lookup keys in, so that a lookup
    /// allocates nothing.
    key: String,
    /// Tokens held by the run's active hooks: token → correlation id.
    tokens: FnvMap<String, String>,
}

/// The key of the entity of kind slot `slot` ([`EntityKind::index`]) and
/// correlation id `corr`, built in `buf`: the slot as one character, then
/// the id, so entities of two kinds sharing an id stay apart.
fn entity_key<'k>(buf: &'k mut String, slot: usize, corr: &str) -> &'k str {
    buf.clear();
    buf.push(char::from(b'0' + slot as u8));
    buf.push_str(corr);
    buf
}

impl RunFold {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready for the next run, keeping the maps' memory unless a large run
    /// made them large (then clearing them per run would cost more than
    /// allocating anew).
    pub fn reset(&mut self) {
        if self.entities.capacity() > 1024 || self.tokens.capacity() > 1024 {
            *self = Self::new();
            return;
        }
        self.entities.clear();
        self.tokens.clear();
        self.run = None;
    }

    /// The run, once created.
    pub fn run(&self) -> Option<Entity> {
        self.run
    }

    /// The entity an event of `kind` with correlation id `corr` is about;
    /// None for the run's own events and for an entity never created.
    pub fn entity(&mut self, kind: EntityKind, corr: Option<&str>) -> Option<Entity> {
        match (kind.index(), corr) {
            (Some(i), Some(c)) => self.entities.get(entity_key(&mut self.key, i, c)).copied(),
            _ => None,
        }
    }

    /// Folds the event at `position` in: advances the state as the writer
    /// would, or refuses it and changes nothing. `token`: a hook_created's
    /// hook token, where the source has one.
    pub fn apply(
        &mut self,
        position: i64,
        event: EventType,
        corr: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        let kind = event.entity_kind(corr.is_some());
        let run_state = self.run.map(|r| r.state);
        let entity = self.entity(kind, corr);
        lifecycle::check_addressed(run_state, entity.map(|e| e.state), event, corr.is_some())
            .map_err(Refusal::Lifecycle)?;

        // The writer's token rule (sql/functions.sql, events_track_hook_tokens):
        // an admitted hook_created whose token an active hook of the run
        // holds is refused; hook_disposed and the run's terminal release.
        if let (EventType::HookCreated, Some(token), Some(c)) = (event, token, corr) {
            if let Some(holder) = self.tokens.get(token) {
                return Err(Refusal::TokenHeld {
                    token: token.to_string(),
                    holder: holder.clone(),
                });
            }
            self.tokens.insert(token.to_string(), c.to_string());
        }
        match (event, corr) {
            (EventType::HookDisposed, Some(c)) => self.tokens.retain(|_, holder| holder != c),
            (e, _) if e.ends_run() => self.tokens.clear(),
            _ => {}
        }

        if kind == EntityKind::Run {
            let after = lifecycle::run_state_after(run_state, event);
            if after != run_state {
                if let Some(state) = after {
                    let created = self.run.map_or(position, |r| r.created);
                    self.run = Some(Entity {
                        state,
                        since: position,
                        created,
                    });
                }
            }
        } else if let (Some(c), Some(state), Some(i)) =
            (corr, lifecycle::entity_state_after(event), kind.index())
        {
            // Look up by &str first: allocate the key only for a new entity.
            let key = entity_key(&mut self.key, i, c);
            match self.entities.get_mut(key) {
                Some(e) => {
                    e.state = state;
                    e.since = position;
                }
                None => {
                    self.entities.insert(
                        key.into(),
                        Entity {
                            state,
                            since: position,
                            created: position,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Every entity of the run with its kind and correlation id, in no
    /// particular order.
    pub fn entities(&self) -> impl Iterator<Item = (EntityKind, &str, Entity)> + '_ {
        self.entities.iter().filter_map(|(key, e)| {
            let slot = usize::from(key.as_bytes()[0].checked_sub(b'0')?);
            Some((*EntityKind::ENTITIES.get(slot)?, &key[1..], *e))
        })
    }

    /// Distinct entities remembered: the fold's memory, for the tests.
    pub fn entities_remembered(&self) -> usize {
        self.entities.len()
    }
}

/// The run's state after its event types, in log order (`None`: no
/// run_created). What attach seeds `workflow_ext.runs` with.
pub fn run_state_after_events<'a>(
    types: impl IntoIterator<Item = Option<&'a str>>,
) -> Option<State> {
    let mut fold = RunFold::new();
    for (position, event) in (1..).zip(types.into_iter().flatten().filter_map(EventType::parse)) {
        // Run-level events only: without correlation ids, an entity's event
        // cannot be placed, and none moves the run.
        if event.kind() == EntityKind::Run {
            let _ = fold.apply(position, event, None, None);
        }
    }
    fold.run().map(|r| r.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(events: &[(&str, Option<&str>, Option<&str>)]) -> (RunFold, Vec<Option<Refusal>>) {
        let mut f = RunFold::new();
        let verdicts = events
            .iter()
            .zip(1..)
            .map(|(&(t, c, token), pos)| f.apply(pos, EventType::parse(t).unwrap(), c, token).err())
            .collect();
        (f, verdicts)
    }

    #[test]
    fn a_refused_event_changes_nothing() {
        let (mut f, v) = fold(&[
            ("run_created", None, None),
            ("run_started", None, None),
            ("step_created", Some("s"), None),
            ("step_completed", Some("s"), None), // refused: never started
            ("step_started", Some("s"), None),
        ]);
        assert_eq!(
            v[3],
            Some(Refusal::Lifecycle(Violation::IllegalTransition {
                state: State::StepPending
            }))
        );
        let s = f.entity(EntityKind::Step, Some("s")).unwrap();
        assert_eq!((s.state, s.since, s.created), (State::StepRunning, 5, 3));
        assert_eq!(f.run().unwrap().state, State::RunRunning);
    }

    #[test]
    fn a_token_is_held_until_disposed_or_the_run_ends() {
        let (_, v) = fold(&[
            ("run_created", None, None),
            ("hook_created", Some("h1"), Some("t")),
            ("hook_created", Some("h2"), Some("t")), // held by h1
            ("hook_disposed", Some("h1"), None),
            ("hook_created", Some("h3"), Some("t")), // released
        ]);
        assert_eq!(
            v[2],
            Some(Refusal::TokenHeld {
                token: "t".into(),
                holder: "h1".into()
            })
        );
        assert_eq!(v[4], None);
    }

    #[test]
    fn entities_name_their_kind() {
        let (f, _) = fold(&[
            ("run_created", None, None),
            ("step_created", Some("x"), None),
            ("wait_created", Some("x"), None),
        ]);
        let got: Vec<_> = f
            .entities()
            .map(|(k, c, e)| (k, c.to_string(), e.state))
            .collect();
        assert_eq!(got.len(), 2);
        assert!(got
            .iter()
            .any(|(k, c, _)| *k == EntityKind::Step && c == "x"));
        assert!(got
            .iter()
            .any(|(k, c, _)| *k == EntityKind::Wait && c == "x"));
    }

    #[test]
    fn run_state_after_events_follows_the_lifecycle() {
        let s = |types: &[&str]| run_state_after_events(types.iter().map(|t| Some(*t)));
        assert_eq!(s(&[]), None);
        assert_eq!(s(&["run_started"]), None);
        assert_eq!(s(&["run_created", "run_started"]), Some(State::RunRunning));
        // A refused event does not move the state.
        assert_eq!(
            s(&["run_created", "run_completed", "run_started"]),
            Some(State::RunRunning)
        );
        assert_eq!(
            s(&["run_created", "run_started", "run_completed", "run_started"]),
            Some(State::RunCompleted)
        );
    }

    /// SQL cannot ask Rust for a vocabulary in a trigger's WHEN or an
    /// index predicate, so the SQL copies of the token rule and of the run's
    /// terminal states are compared with the Rust vocabulary here: the
    /// token trigger fires on exactly the events the fold takes or releases
    /// tokens on, the rebuild releases on the run's terminal events, and
    /// attach seeds finished_at for exactly the run's terminal states.
    #[test]
    fn the_sql_copies_of_the_token_rule_name_the_rust_vocabulary() {
        let quoted = |names: Vec<&str>, q: &str| {
            names
                .iter()
                .map(|n| format!("{q}{n}{q}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let terminals: Vec<&str> = EventType::RUN_TERMINALS
            .iter()
            .map(|t| t.as_str())
            .collect();
        let mut token_events = vec![
            EventType::HookCreated.as_str(),
            EventType::HookDisposed.as_str(),
        ];
        token_events.extend(&terminals);
        let finalize = include_str!("../../sql/finalize.sql");
        let functions = include_str!("../../sql/functions.sql");
        let attach = include_str!("../../sql/attach.sql");
        assert!(
            finalize.contains(&format!(
                "WHEN (NEW.type IN ({}))",
                quoted(token_events, "'")
            )),
            "finalize.sql's events_hook_tokens WHEN"
        );
        assert!(
            functions.contains(&format!(
                "OR e.type IN ({})))",
                quoted(terminals.clone(), "'")
            )),
            "functions.sql's rebuild_hook_tokens"
        );
        let terminal_states: Vec<&str> = State::ALL
            .iter()
            .filter(|s| s.kind() == EntityKind::Run && s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert!(
            attach.contains(&format!("r.state IN ({})", quoted(terminal_states, "''"))),
            "attach.sql's seeding of finished_at"
        );
        // Every event that ends a run leaves it in a terminal state, and
        // only those.
        for t in EventType::ALL {
            let after = lifecycle::run_state_after(Some(State::RunRunning), t);
            assert_eq!(
                t.ends_run(),
                t.kind() == EntityKind::Run && after.is_some_and(State::is_terminal),
                "{t}"
            );
        }
    }
}
