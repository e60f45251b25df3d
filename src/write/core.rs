//! The write core: one row of a protected log locked, decided and
//! numbered.
//!
//! Every row that enters `workflow_ext.events`, whether through
//! `append_event`, `append_suspension_event`, a client's plain INSERT or a
//! COPY, passes the BEFORE INSERT trigger
//! ([`super::trigger`]), which calls [`lock_and_decide`] here: the only place that checks the lifecycle and assigns `seq`:
//!
//! 1. validate the row's columns ([`crate::rules::validate`]);
//! 2. take the run's row lock in `workflow_ext.runs` by bumping `last_seq`
//!    ([`lock_run`]; appends to one run queue here until the holder commits,
//!    appends to other runs never meet; the lock is held to commit, so seq
//!    order is commit order and a rolled back append leaves no gap); a run
//!    this transaction has locked already is in [`run_cache`], and its
//!    next append runs no statement for the lock;
//! 3. know the entity's last event *after* the lock was granted, so the
//!    state is never stale ([`entity_state`]);
//! 4. ask [`lifecycle::check`]; refuse, or stamp `id` and `seq` ([`decide`]).
//!
//! A duplicate creation is not refused by the trigger: it hands the row on
//! with the next seq (not taking it) and lets the partial unique index
//! decide. A plain INSERT then fails with the index's own 23505, and
//! `INSERT … ON CONFLICT DO NOTHING` (the idempotent append) skips the row.
//! Either way the log's uniqueness is enforced by the index, not by timing.
//! Another arbiter of an `INSERT … ON CONFLICT` can skip a row after it was
//! numbered: [`super::skipped`] gives the seq back.

use crate::errors::{internal, or_internal, WfError, WfResult};
use crate::pg::citus::{self, ShardOfLog};
use crate::pg::counters;
use crate::pg::index_scan::{newest_in_own_log, own_log_and_index};
use crate::pg::plans::{self, required, EQ, INT8ARRAY, PLUS, TEXT, TEXTARRAY};
use crate::pg::transaction::uses_transaction_snapshot;
use crate::rules::lifecycle::{self, EntityKind, EventType, State, Violation};
use crate::rules::validate::EventAddress;
use crate::write::creation_probe;
use crate::write::run_cache::{self, Held};
use crate::write::skipped;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

/// SPI plans of one protected log (`workflow_ext.events` or a table put
/// under the extension with `attach`), prepared the first time its trigger
/// fires in this backend and kept.
pub(crate) struct LogPlans {
    /// The name and schema the statements were written with: a renamed
    /// table gets new plans (a kept plan re-parses its text).
    relname: String,
    relnamespace: pg_sys::Oid,
    pub(crate) oid: pg_sys::Oid,
    /// Written for runs keyed by (log, run_id) ([`plans::runs_keyed_by_log`]).
    keyed: bool,
    /// Where the run rows live when this is a shard of a distributed log
    /// ([`crate::pg::citus`]); None: `workflow_ext.runs`, keyed by OID.
    pub(crate) shard: Option<ShardOfLog>,
    insert_run: OwnedPreparedStatement,
    bump: OwnedPreparedStatement,
    /// The bump, returning also what this statement's snapshot says of the
    /// run's last_seq and of the entity's last event, one plan per entity
    /// kind: one statement instead of two when nobody appended to the run
    /// since the snapshot (see [`lock_run`]).
    bump_and_peek: [OwnedPreparedStatement; EntityKind::ENTITIES.len()],
    /// Last event of an entity, one plan per entity kind.
    entity_last: [OwnedPreparedStatement; EntityKind::ENTITIES.len()],
    /// A unique creation by its key, one plan per [`EventType::UNIQUE_CREATIONS`] entry.
    find_creation: [OwnedPreparedStatement; EventType::UNIQUE_CREATIONS.len()],
    /// Which of the (run, seq) pairs of two arrays the log has no row at,
    /// by position ([`super::skipped`]).
    pub(crate) missing_at: OwnedPreparedStatement,
}

thread_local! {
    static LOG_PLANS: RefCell<HashMap<pg_sys::Oid, Rc<LogPlans>>> = RefCell::new(HashMap::new());
}

fn kind_types_sql(kind: EntityKind) -> String {
    plans::type_list(kind.event_types())
}

/// An entity's last event in `log`, by kind; `alias.` prefixes the columns.
fn entity_last_sql(log: &str, kind: EntityKind, alias: &str) -> String {
    format!(
        "SELECT {alias}type::pg_catalog.text FROM {log} {} \
         WHERE {alias}run_id {EQ} $1 AND {alias}correlation_id {EQ} $2 AND {alias}type {EQ} ANY ({}) \
         ORDER BY {alias}seq DESC LIMIT 1",
        alias.trim_end_matches('.'),
        kind_types_sql(kind)
    )
}

/// The plans of the log `rel`, whose name (as regclass prints it, quoted
/// and qualified) is `log`. The run rows of every log live in
/// `workflow_ext.runs`, keyed by (log, run_id) when `keyed` (else by run_id
/// alone: a database not yet updated to 0.3.0, whose one log is
/// `workflow_ext.events`); those of a shard of a distributed log in the
/// co-located shard of `workflow_ext.distributed_runs`, keyed by the
/// logical log's name ([`crate::pg::citus`]).
fn build_log_plans(
    c: &SpiClient<'_>,
    rel: pg_sys::Oid,
    log: &str,
    keyed: bool,
    shard: Option<ShardOfLog>,
) -> LogPlans {
    let (runs, log_value) = match &shard {
        Some(s) => (s.runs_shard.clone(), plans::quote_literal(&s.log_name)),
        None => (
            "workflow_ext.runs".to_owned(),
            format!("'{}'::pg_catalog.regclass", rel.to_u32()),
        ),
    };
    let keyed = keyed || shard.is_some();
    // The condition naming this log's run rows, for a table alias ("" or "r.").
    let key = |alias: &str| {
        if keyed {
            format!("{alias}log {EQ} {log_value} AND")
        } else {
            String::new()
        }
    };
    let (log_col, log_val, conflict) = if keyed {
        ("log, ", format!("{log_value}, "), "log, run_id")
    } else {
        ("", String::new(), "run_id")
    };
    let (r_key, s_key, key) = (key("r."), key("s."), key(""));
    // The time of the run's last append, for monitoring (0.3.0 on; not
    // indexed, so the bump stays a HOT update).
    let touch = if keyed {
        ", last_event_at = pg_catalog.now()"
    } else {
        ""
    };
    LogPlans {
        relname: String::new(),
        relnamespace: pg_sys::InvalidOid,
        oid: rel,
        keyed,
        shard,
        insert_run: plans::keep(
            c,
            &format!(
                "INSERT INTO {runs} ({log_col}run_id, state, last_seq) \
                 VALUES ({log_val}$1, 'pending', 1) \
                 ON CONFLICT ({conflict}) DO NOTHING RETURNING last_seq"
            ),
            &[TEXT],
        ),
        bump: plans::keep(
            c,
            &format!(
                "UPDATE {runs} SET last_seq = last_seq {PLUS} 1{touch} WHERE {key} run_id {EQ} $1 \
                 RETURNING state, last_seq"
            ),
            &[TEXT],
        ),
        bump_and_peek: EntityKind::ENTITIES.map(|kind| {
            plans::keep(
                c,
                &format!(
                    "UPDATE {runs} r SET last_seq = r.last_seq {PLUS} 1{touch} \
                     WHERE {r_key} r.run_id {EQ} $1 \
                     RETURNING r.state, r.last_seq, \
                       (SELECT s.last_seq FROM {runs} s WHERE {s_key} s.run_id {EQ} $1), ({})",
                    entity_last_sql(log, kind, "e.")
                ),
                &[TEXT, TEXT],
            )
        }),
        entity_last: EntityKind::ENTITIES
            .map(|kind| plans::keep(c, &entity_last_sql(log, kind, ""), &[TEXT, TEXT])),
        find_creation: EventType::UNIQUE_CREATIONS
            .map(|t| plans::keep(c, &creation_probe::find_creation_sql(log, t), &[TEXT, TEXT])),
        missing_at: plans::keep(
            c,
            &format!(
                "SELECT s.i FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), \
                                            pg_catalog.unnest($2::pg_catalog.int8[])) \
                                 WITH ORDINALITY s(run_id, seq, i) \
                 WHERE NOT EXISTS (SELECT FROM {log} e WHERE e.run_id {EQ} s.run_id AND e.seq {EQ} s.seq)"
            ),
            &[TEXTARRAY, INT8ARRAY],
        ),
    }
}

/// The kept plans of the log the trigger fired on, built on first use in
/// this backend, and again after a rename or `ALTER EXTENSION UPDATE`.
///
/// # Safety
/// `rel` is the trigger's open relation.
pub(crate) unsafe fn log_plans(
    client: &SpiClient<'_>,
    rel: pg_sys::Relation,
) -> WfResult<Rc<LogPlans>> {
    // SAFETY: an open relation has its pg_class row in rd_rel.
    let (oid, relname, relnamespace) = unsafe {
        let form = (*rel).rd_rel;
        (
            (*rel).rd_id,
            CStr::from_ptr((*form).relname.data.as_ptr()),
            (*form).relnamespace,
        )
    };
    let keyed = plans::runs_keyed_by_log();
    let cached = LOG_PLANS.with(|m| m.borrow().get(&oid).cloned());
    if let Some(p) = cached {
        if p.keyed == (keyed || p.shard.is_some())
            && p.relnamespace == relnamespace
            && p.relname.as_bytes() == relname.to_bytes()
        {
            return Ok(p);
        }
    }
    // Always schema-qualified: regclass output leaves the schema out when
    // the table is visible on the current search_path, which the trigger
    // does not pin, so an unqualified name could later resolve to a
    // look-alike table (or view) earlier on a caller's path.
    let log = crate::pg::owner::qualified_name(oid)
        .unwrap_or_else(|| internal!("relation {} has no name", oid.to_u32()));
    let shard = citus::shard_of_log(client, relname, relnamespace)?;
    let mut plans = build_log_plans(client, oid, &log, keyed, shard);
    plans.relname = relname.to_string_lossy().into_owned();
    plans.relnamespace = relnamespace;
    let plans = Rc::new(plans);
    LOG_PLANS.with(|m| m.borrow_mut().insert(oid, Rc::clone(&plans)));
    Ok(plans)
}

/// The plans this backend keeps for log `oid`, if its trigger fired here.
pub(crate) fn kept_plans(oid: pg_sys::Oid) -> Option<Rc<LogPlans>> {
    LOG_PLANS.with(|m| m.borrow().get(&oid).cloned())
}

/// Where the run rows of log `oid` are kept, when this backend's trigger
/// found it to be a shard of a distributed log: (the run table's shard,
/// the key as an SQL literal). None: `workflow_ext.runs`.
pub(crate) fn shard_runs(oid: pg_sys::Oid) -> Option<(String, String)> {
    LOG_PLANS.with(|m| {
        m.borrow().get(&oid).and_then(|p| {
            p.shard
                .as_ref()
                .map(|s| (s.runs_shard.clone(), plans::quote_literal(&s.log_name)))
        })
    })
}

/// The entity (kind slot, correlation id) an event is about; None for
/// run-level events.
fn entity_key<'a>(addr: &EventAddress<'a>) -> Option<(usize, &'a str)> {
    match (
        addr.event
            .entity_kind(addr.correlation_id.is_some())
            .index(),
        addr.correlation_id,
    ) {
        (Some(slot), Some(corr)) => Some((slot, corr)),
        _ => None,
    }
}

/// What the trigger knows of the entity's last event once the run is locked.
enum Peek {
    /// The lock statement's snapshot had seen every append to the run, so
    /// the last event it read is current.
    Current(Option<EventType>),
    /// Someone appended since that snapshot (or nobody asked): read again.
    Stale,
}

/// The run, locked for this append.
struct LockedRun {
    /// `None`: the run has no run_created.
    state: Option<State>,
    /// The seq this append gets.
    seq: i64,
    peek: Peek,
}

/// Step 2: lock the run by bumping its `last_seq`, and learn its state and
/// this append's seq.
fn lock_run(client: &mut SpiClient<'_>, plans: &LogPlans, addr: &EventAddress<'_>) -> LockedRun {
    let run_id = addr.run_id;
    let key = entity_key(addr);
    let bumped = match key {
        Some((slot, corr)) => or_internal!(
            client.update(
                &plans.bump_and_peek[slot],
                Some(1),
                &[run_id.into(), corr.into()]
            ),
            "lock run"
        ),
        None => or_internal!(
            client.update(&plans.bump, Some(1), &[run_id.into()]),
            "lock run"
        ),
    };
    if bumped.is_empty() {
        if uses_transaction_snapshot() {
            // REPEATABLE READ / SERIALIZABLE: the run may exist but have been
            // created after this transaction's snapshot, which an UPDATE
            // silently skips. Probing with INSERT … ON CONFLICT DO NOTHING
            // raises 40001 for exactly that case (and waits for an
            // in-progress creator); if the run truly does not exist, the
            // probe row dies with the 23503 raised for this append.
            or_internal!(
                client.update(&plans.insert_run, Some(1), &[run_id.into()]),
                "probe run"
            );
        }
        return LockedRun {
            state: None,
            seq: 0,
            peek: Peek::Stale,
        };
    }
    let bumped = bumped.first();
    let state: String = required(&bumped, 1, "run state");
    let seq: i64 = required(&bumped, 2, "run seq");
    let state = State::parse(EntityKind::Run, &state)
        .unwrap_or_else(|| internal!("run state \"{state}\" is not a run state"));
    // Every append bumps last_seq, so the snapshot saw every append to the
    // run exactly when the last_seq it saw is one below the bumped one.
    let peek = match key {
        Some(_) if bumped.get::<i64>(3).ok().flatten() == seq.checked_sub(1) => {
            let last: Option<String> = or_internal!(bumped.get(4), "entity event");
            Peek::Current(last.as_deref().map(parse_stored_type))
        }
        _ => Peek::Stale,
    };
    LockedRun {
        state: Some(state),
        seq,
        peek,
    }
}

/// A type read back from the log: the enum guarantees it is in the
/// vocabulary.
fn parse_stored_type(t: &str) -> EventType {
    EventType::parse(t).unwrap_or_else(|| internal!("stored event type \"{t}\" is unknown"))
}

/// Step 3: the entity's state after the run lock, from the peek when it is
/// current, else read in a fresh snapshot.
fn entity_state(
    client: &mut SpiClient<'_>,
    plans: &LogPlans,
    addr: &EventAddress<'_>,
    run: &LockedRun,
    copy: Option<u64>,
) -> Option<State> {
    let (slot, corr) = entity_key(addr)?;
    run.state?;
    let copied =
        copy.and_then(|copy| run_cache::copied_entity(copy, plans.oid, addr.run_id, slot, corr));
    let last = match (copied, &run.peek) {
        (Some(last), _) => last,
        (None, peek) => match peek {
            Peek::Current(last) => *last,
            Peek::Stale => match direct_entity_last(plans, addr.run_id, corr, slot) {
                Some(last) => last,
                None => {
                    let rows = or_internal!(
                        client.update(
                            &plans.entity_last[slot],
                            Some(1),
                            &[addr.run_id.into(), corr.into()]
                        ),
                        "entity state"
                    );
                    if rows.is_empty() {
                        None
                    } else {
                        Some(parse_stored_type(&required::<String>(
                            &rows.first(),
                            1,
                            "entity event",
                        )))
                    }
                }
            },
        },
    };
    last.and_then(lifecycle::entity_state_after)
}

/// The entity's last event read straight from `workflow_ext.events`'
/// index `events_entity_seq`, for the own log (None: another log, or it
/// could not be read so; the caller asks SQL). Within a transaction that
/// holds the run's lock, nobody else appends to the run, so the rows this
/// transaction sees now are the run's rows (see
/// [`crate::pg::index_scan::newest_in_own_log`]).
fn direct_entity_last(
    plans: &LogPlans,
    run_id: &str,
    corr: &str,
    slot: usize,
) -> Option<Option<EventType>> {
    // SAFETY: inside the trigger's transaction; the relations are the own
    // log and its index.
    unsafe {
        let (log, index) = own_log_and_index(c"events_entity_seq", &[pg_sys::ACL_SELECT])?;
        if log != plans.oid {
            return None;
        }
        let kind = EntityKind::ENTITIES[slot];
        let last = newest_in_own_log(log, index, run_id, corr, c"type", |t| {
            EventType::parse(t).is_some_and(|e| kind.event_types().any(|k| k == e))
        })?;
        Some(last.as_deref().map(parse_stored_type))
    }
}

/// Step 4: the lifecycle's verdict; on acceptance, the row's seq, and the
/// run as the append leaves it (kept in [`run_cache`], written back to the
/// run row before commit).
fn decide(
    client: &mut SpiClient<'_>,
    plans: &LogPlans,
    addr: &EventAddress<'_>,
    run: LockedRun,
    entity: Option<State>,
    copy: Option<u64>,
    skip: Option<u32>,
) -> WfResult<i64> {
    match lifecycle::check_addressed(run.state, entity, addr.event, addr.correlation_id.is_some()) {
        Ok(()) => {
            if let Some(depth) = skip {
                skipped::numbered(depth, plans.oid, addr.run_id, run.seq, run.state);
            }
            if let Some(copy) = copy {
                run_cache::remember_copied(
                    copy,
                    plans.oid,
                    addr.run_id,
                    entity_key(addr),
                    addr.event,
                );
            }
            let after = lifecycle::run_state_after(run.state, addr.event)
                .unwrap_or_else(|| internal!("{} left the run without a state", addr.event));
            if addr.event.kind() == EntityKind::Run
                && Some(after) != run.state
                && after.is_terminal()
            {
                counters::count_run_finished(after);
            }
            if run.state.is_some() {
                run_cache::advance(
                    plans.oid,
                    addr.run_id,
                    Held {
                        state: after,
                        last_seq: run.seq,
                    },
                );
            }
            Ok(run.seq)
        }
        Err(Violation::DuplicateCreation) if addr.is_unique_creation() => {
            // Hand the row on for the unique index to judge (module doc);
            // its seq is not taken, so an ON CONFLICT skip leaves no gap.
            if let Some(state) = run.state {
                run_cache::advance(
                    plans.oid,
                    addr.run_id,
                    Held {
                        state,
                        last_seq: run.seq - 1,
                    },
                );
            }
            let stored = EventType::UNIQUE_CREATIONS
                .iter()
                .position(|t| *t == addr.event);
            if stored
                .and_then(|i| creation_probe::creation(client, &plans.find_creation[i], addr))
                .is_none()
            {
                // The index would not catch it: refuse ourselves.
                return Err(addr.refused(Violation::DuplicateCreation, run.state));
            }
            // The owner of an attached table can drop its creation index (a
            // package migration drops and recreates it): without it the row
            // would be stored twice, so refuse it ourselves.
            if !creation_index_intact(client, plans) {
                return Err(WfError::CreationIndexMissing {
                    log: crate::pg::owner::relation_name(plans.oid),
                });
            }
            Ok(run.seq)
        }
        Err(violation) => Err(addr.refused(violation, run.state)),
    }
}

/// Whether `log` has the extension's creation index, valid
/// (`workflow_ext.creation_index_of`, sql/attach.sql). The extension's own
/// log always has it: only the extension's owner can drop it. A database
/// whose SQL predates the function (before ALTER EXTENSION UPDATE) is not
/// asked.
fn creation_index_intact(client: &mut SpiClient<'_>, plans: &LogPlans) -> bool {
    if let Some(shard) = &plans.shard {
        return shard.has_creation_index();
    }
    let log = plans.oid;
    let asked = or_internal!(
        client.update(
            "SELECT CASE WHEN $1 OPERATOR(pg_catalog.=) 'workflow_ext.events'::pg_catalog.regclass::pg_catalog.oid \
                          OR pg_catalog.to_regprocedure('workflow_ext.creation_index_of(pg_catalog.regclass)') IS NULL \
                         THEN true END",
            Some(1),
            &[log.into()],
        ),
        "creation index check"
    );
    if asked.first().get::<bool>(1).ok().flatten().is_some() {
        return true;
    }
    or_internal!(
        client.update(
            "SELECT workflow_ext.creation_index_of($1::pg_catalog.oid::pg_catalog.regclass) IS NOT NULL",
            Some(1),
            &[log.into()],
        ),
        "creation index check"
    )
    .first()
    .get::<bool>(1)
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// A concurrent attach of the trigger's log is adopting its existing runs
/// (`workflow_ext.attach_concurrently`; the trigger's arguments say so).
#[derive(Clone, Copy)]
pub(crate) struct Adopting {
    /// The transaction that installed the trigger: every row written before
    /// it committed is an existing row.
    pub(crate) began: pg_sys::TransactionId,
}

/// Adopts the run before its first append in this transaction: numbers its
/// existing rows and seeds its run row (`workflow_ext.adopt_runs`, the
/// statement the attach's own batches run), unless that was done. Under
/// REPEATABLE READ or SERIALIZABLE a snapshot taken before the attach began
/// would miss existing rows: such a transaction gets 40001 and retries.
fn adopt_run(
    client: &mut SpiClient<'_>,
    log: pg_sys::Oid,
    run_id: &str,
    adopting: Adopting,
) -> WfResult<()> {
    // SAFETY: the transaction's snapshot, inside the transaction.
    if uses_transaction_snapshot()
        && unsafe { pg_sys::XidInMVCCSnapshot(adopting.began, pg_sys::GetTransactionSnapshot()) }
    {
        return Err(WfError::SnapshotBeforeAttach {
            log: crate::pg::owner::relation_name(log),
        });
    }
    or_internal!(
        client.update(
            "SELECT workflow_ext.adopt_runs($1::pg_catalog.oid::pg_catalog.regclass, ARRAY[$2])",
            Some(1),
            &[log.into(), run_id.into()],
        ),
        "adopt run"
    );
    Ok(())
}

/// Steps 2–4 of the module doc for one validated row; returns its seq.
///
/// `copy`: the row is a row of that `COPY … FROM` itself
/// ([`crate::pg::row_origin`]): what the COPY stored of the run's entities is
/// taken from, and kept in, [`run_cache`] instead of read from the log.
/// `skip`: an `INSERT … ON CONFLICT` at that executor depth may still skip
/// the row: its seq is checked when the statement ends ([`skipped`]).
pub(crate) fn lock_and_decide(
    client: &mut SpiClient<'_>,
    plans: &LogPlans,
    addr: &EventAddress<'_>,
    adopting: Option<Adopting>,
    copy: Option<u64>,
    skip: Option<u32>,
) -> WfResult<i64> {
    // A row of an announced batch whose run this transaction has locked
    // for the batch (src/write/batch.rs).
    if let Some(seq) = crate::write::batch::admit_if_announced(client, plans.oid, addr)? {
        run_cache::forget_copied();
        return Ok(seq);
    }
    let run = match run_cache::held(plans.oid, addr.run_id) {
        // Locked by an earlier append of this transaction: no statement.
        Some(held) => LockedRun {
            state: Some(held.state),
            seq: held
                .last_seq
                .checked_add(1)
                .unwrap_or_else(|| internal!("run \"{}\" has no seq left", addr.run_id)),
            peek: Peek::Stale,
        },
        None => {
            if let Some(adopting) = adopting {
                adopt_run(client, plans.oid, addr.run_id, adopting)?;
            }
            if addr.event == EventType::RunCreated {
                let inserted = or_internal!(
                    client.update(&plans.insert_run, Some(1), &[addr.run_id.into()]),
                    "insert run"
                );
                if !inserted.is_empty() {
                    let created = Held {
                        state: State::RunPending,
                        last_seq: 1,
                    };
                    run_cache::hold(plans.oid, addr.run_id, created);
                    if let Some(copy) = copy {
                        run_cache::remember_copied(copy, plans.oid, addr.run_id, None, addr.event);
                    }
                    if let Some(depth) = skip {
                        skipped::numbered(depth, plans.oid, addr.run_id, 1, None);
                    }
                    return Ok(1);
                }
                // The run exists already (possibly created by a transaction
                // we just waited for): go on, the lifecycle check names the
                // duplicate.
            }
            let run = lock_run(client, plans, addr);
            if let Some(state) = run.state {
                run_cache::hold(
                    plans.oid,
                    addr.run_id,
                    Held {
                        state,
                        last_seq: run.seq,
                    },
                );
            }
            run
        }
    };
    let entity = entity_state(client, plans, addr, &run, copy);
    decide(client, plans, addr, run, entity, copy, skip)
}
