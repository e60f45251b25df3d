//! The write path.
//!
//! Every row that enters `workflow_ext.events`, whether through
//! `append_event`, `append_suspension_event`, a client's plain INSERT or a
//! COPY, passes the BEFORE INSERT trigger [`events_before_insert`]. The
//! trigger is the only place that checks the lifecycle and assigns `seq`:
//!
//! 1. validate the row's columns ([`crate::validate`]);
//! 2. take the run's row lock in `workflow_ext.runs` by bumping `last_seq`
//!    ([`lock_run`]; appends to one run queue here until the holder commits,
//!    appends to other runs never meet; the lock is held to commit, so seq
//!    order is commit order and a rolled back append leaves no gap);
//! 3. know the entity's last event *after* the lock was granted, so the
//!    state is never stale ([`entity_state`]);
//! 4. ask [`lifecycle::check`]; refuse, or stamp `id` and `seq` ([`decide`]).
//!
//! A duplicate creation is not refused by the trigger: it hands the row on
//! with the next seq (undoing its bump) and lets the partial unique index
//! decide. A plain INSERT then fails with the index's own 23505, and
//! `INSERT … ON CONFLICT DO NOTHING` (the idempotent append) skips the row.
//! Either way the log's uniqueness is enforced by the index, not by timing.

use crate::creation_probe::{self, Probe};
use crate::errors::{internal, or_internal, or_raise, raise, WfError, WfResult};
use crate::event_id;
use crate::lifecycle::{self, EntityKind, EventType, State, Violation};
use crate::log_shape;
use crate::metrics;
use crate::payload::Payload;
use crate::plans::{self, required, BOOL, EQ, JSONB, MINUS, PLUS, TEXT};
use crate::subxact::{refuse_if_read_only, uses_transaction_snapshot};
use crate::validate::{self, EventAddress};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::CStr;
use std::rc::Rc;

/// SPI plans of one protected log (`workflow_ext.events` or a table put
/// under the extension with `attach`), prepared the first time its trigger
/// fires in this backend and kept.
struct LogPlans {
    /// The name and schema the statements were written with: a renamed
    /// table gets new plans (a kept plan re-parses its text).
    relname: String,
    relnamespace: pg_sys::Oid,
    oid: pg_sys::Oid,
    /// Written for runs keyed by (log, run_id) ([`plans::runs_keyed_by_log`]).
    keyed: bool,
    insert_run: OwnedPreparedStatement,
    bump: OwnedPreparedStatement,
    /// The bump, returning also what this statement's snapshot says of the
    /// run's last_seq and of the entity's last event, one plan per entity
    /// kind: one statement instead of two when nobody appended to the run
    /// since the snapshot (see [`lock_run`]).
    bump_and_peek: [OwnedPreparedStatement; EntityKind::ENTITIES.len()],
    unbump: OwnedPreparedStatement,
    set_run_state: OwnedPreparedStatement,
    /// Last event of an entity, one plan per entity kind.
    entity_last: [OwnedPreparedStatement; EntityKind::ENTITIES.len()],
    /// A unique creation by its key, one plan per [`EventType::UNIQUE_CREATIONS`] entry.
    find_creation: [OwnedPreparedStatement; EventType::UNIQUE_CREATIONS.len()],
}

/// Plans of the append functions, which write `workflow_ext.events`.
struct AppendPlans {
    /// `find_creation`, and the insert if nothing was found, in one
    /// statement; one plan per suspension type.
    find_or_insert: [OwnedPreparedStatement; 4],
    /// The insert alone, for a key the creation probe has just found absent
    /// (src/creation_probe.rs); one plan per suspension type, none for a
    /// hook, whose stored creation may be the hook_conflict recorded in its
    /// place, which the creation index does not hold (`find_creation_sql`).
    insert: [Option<OwnedPreparedStatement>; 4],
}

thread_local! {
    static LOG_PLANS: RefCell<HashMap<pg_sys::Oid, Rc<LogPlans>>> = RefCell::new(HashMap::new());
    static APPEND_PLANS: OnceCell<AppendPlans> = const { OnceCell::new() };
}

/// The extension's own log, which the append functions write.
const OWN_LOG: &str = "workflow_ext.events";

fn kind_types_sql(kind: EntityKind) -> String {
    plans::type_list(kind.event_types())
}

/// Which of the per-suspension-type plans serves `event`.
fn suspension_index(event: EventType) -> Option<usize> {
    EventType::SUSPENSIONS.iter().position(|t| *t == event)
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
/// `workflow_ext.events`).
fn build_log_plans(c: &SpiClient<'_>, rel: pg_sys::Oid, log: &str, keyed: bool) -> LogPlans {
    let oid = rel.to_u32();
    // The condition naming this log's run rows, for a table alias ("" or "r.").
    let key = |alias: &str| {
        if keyed {
            format!("{alias}log {EQ} '{oid}'::pg_catalog.regclass AND")
        } else {
            String::new()
        }
    };
    let (log_col, log_val, conflict) = if keyed {
        (
            "log, ",
            format!("'{oid}'::pg_catalog.regclass, "),
            "log, run_id",
        )
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
        insert_run: plans::keep(
            c,
            &format!(
                "INSERT INTO workflow_ext.runs ({log_col}run_id, state, last_seq) \
                 VALUES ({log_val}$1, 'pending', 1) \
                 ON CONFLICT ({conflict}) DO NOTHING RETURNING last_seq"
            ),
            &[TEXT],
        ),
        bump: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs SET last_seq = last_seq {PLUS} 1{touch} WHERE {key} run_id {EQ} $1 \
                 RETURNING state, last_seq"
            ),
            &[TEXT],
        ),
        bump_and_peek: EntityKind::ENTITIES.map(|kind| {
            plans::keep(
                c,
                &format!(
                    "UPDATE workflow_ext.runs r SET last_seq = r.last_seq {PLUS} 1{touch} \
                     WHERE {r_key} r.run_id {EQ} $1 \
                     RETURNING r.state, r.last_seq, \
                       (SELECT s.last_seq FROM workflow_ext.runs s WHERE {s_key} s.run_id {EQ} $1), ({})",
                    entity_last_sql(log, kind, "e.")
                ),
                &[TEXT, TEXT],
            )
        }),
        unbump: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs SET last_seq = last_seq {MINUS} 1 WHERE {key} run_id {EQ} $1"
            ),
            &[TEXT],
        ),
        set_run_state: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs SET state = $2, \
                 finished_at = CASE WHEN $3 THEN coalesce(finished_at, pg_catalog.now()) END \
                 WHERE {key} run_id {EQ} $1"
            ),
            &[TEXT, TEXT, BOOL],
        ),
        entity_last: EntityKind::ENTITIES
            .map(|kind| plans::keep(c, &entity_last_sql(log, kind, ""), &[TEXT, TEXT])),
        find_creation: EventType::UNIQUE_CREATIONS.map(|t| plans::keep(c, &creation_probe::find_creation_sql(log, t), &[TEXT, TEXT])),
    }
}

fn build_append_plans(c: &SpiClient<'_>) -> AppendPlans {
    let creation_types = plans::type_list(EventType::SUSPENSIONS);
    let on_conflict = format!(
        "ON CONFLICT (run_id, correlation_id, type) WHERE type {EQ} ANY ({creation_types}) DO NOTHING"
    );
    AppendPlans {
        find_or_insert: EventType::SUSPENSIONS.map(|t| {
            plans::keep(
                c,
                &format!(
                    "WITH found AS ({}), \
                     ins AS (INSERT INTO {OWN_LOG} (run_id, correlation_id, type, payload) \
                             SELECT $1, $2, '{t}', $3 WHERE NOT EXISTS (SELECT FROM found) \
                             {on_conflict} RETURNING id, seq) \
                     SELECT id, seq, false FROM found UNION ALL SELECT id, seq, true FROM ins",
                    creation_probe::find_creation_sql(OWN_LOG, t)
                ),
                &[TEXT, TEXT, JSONB],
            )
        }),
        insert: EventType::SUSPENSIONS.map(|t| {
            (t != EventType::HookCreated).then(|| {
                plans::keep(
                    c,
                    &format!(
                        "INSERT INTO {OWN_LOG} (run_id, correlation_id, type, payload) \
                         VALUES ($1, $2, '{t}', $3) {on_conflict} RETURNING id, seq"
                    ),
                    &[TEXT, TEXT, JSONB],
                )
            })
        }),
    }
}

/// The kept plans of the log the trigger fired on, built on first use in
/// this backend, and again after a rename or `ALTER EXTENSION UPDATE`.
///
/// # Safety
/// `rel` is the trigger's open relation.
unsafe fn log_plans(client: &SpiClient<'_>, rel: pg_sys::Relation) -> Rc<LogPlans> {
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
        if p.keyed == keyed
            && p.relnamespace == relnamespace
            && p.relname.as_bytes() == relname.to_bytes()
        {
            return p;
        }
    }
    // Always schema-qualified: regclass output leaves the schema out when
    // the table is visible on the current search_path, which the trigger
    // does not pin, so an unqualified name could later resolve to a
    // look-alike table (or view) earlier on a caller's path.
    let log: String = or_internal!(
        client.select(
            "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' \
                    OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
              WHERE c.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[oid.into()]
        ),
        "log name"
    )
    .first()
    .get(1)
    .ok()
    .flatten()
    .unwrap_or_else(|| internal!("relation {} has no name", oid.to_u32()));
    let mut plans = build_log_plans(client, oid, &log, keyed);
    plans.relname = relname.to_string_lossy().into_owned();
    plans.relnamespace = relnamespace;
    let plans = Rc::new(plans);
    LOG_PLANS.with(|m| m.borrow_mut().insert(oid, Rc::clone(&plans)));
    plans
}

fn with_append_plans<R>(
    client: &mut SpiClient<'_>,
    f: impl FnOnce(&mut SpiClient<'_>, &AppendPlans) -> R,
) -> R {
    APPEND_PLANS.with(|cell| {
        let plans = cell.get_or_init(|| build_append_plans(client));
        f(client, plans)
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
) -> Option<State> {
    let (slot, corr) = entity_key(addr)?;
    run.state?;
    let last = match &run.peek {
        Peek::Current(last) => *last,
        Peek::Stale => {
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
    };
    last.and_then(lifecycle::entity_state_after)
}

/// Step 4: the lifecycle's verdict; on acceptance, the run's new state is
/// recorded and the row's seq returned.
fn decide(
    client: &mut SpiClient<'_>,
    plans: &LogPlans,
    addr: &EventAddress<'_>,
    run: LockedRun,
    entity: Option<State>,
) -> WfResult<i64> {
    match lifecycle::check_addressed(run.state, entity, addr.event, addr.correlation_id.is_some()) {
        Ok(()) => {
            let after = lifecycle::run_state_after(run.state, addr.event);
            if addr.event.kind() == EntityKind::Run && after != run.state {
                let after = after
                    .unwrap_or_else(|| internal!("{} left the run without a state", addr.event));
                or_internal!(
                    client.update(
                        &plans.set_run_state,
                        None,
                        &[
                            addr.run_id.into(),
                            after.as_str().into(),
                            after.is_terminal().into()
                        ],
                    ),
                    "set run state"
                );
                if after.is_terminal() {
                    metrics::count_run_finished(after);
                }
            }
            Ok(run.seq)
        }
        Err(Violation::DuplicateCreation) if addr.is_unique_creation() => {
            // Hand the row on for the unique index to judge (module doc);
            // undo the bump so an ON CONFLICT skip leaves no gap.
            or_internal!(
                client.update(&plans.unbump, None, &[addr.run_id.into()]),
                "unlock run"
            );
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
            if !creation_index_intact(client, plans.oid) {
                return Err(WfError::CreationIndexMissing {
                    log: crate::owner::relation_name(plans.oid),
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
fn creation_index_intact(client: &mut SpiClient<'_>, log: pg_sys::Oid) -> bool {
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

/// Steps 2–4 of the module doc for one validated row; returns its seq.
fn lock_and_decide(
    client: &mut SpiClient<'_>,
    plans: &LogPlans,
    addr: &EventAddress<'_>,
) -> WfResult<i64> {
    // A row of an announced batch whose run this transaction has locked
    // for the batch (src/batch.rs).
    if let Some(seq) = crate::batch::admit_if_announced(client, plans.oid, addr)? {
        return Ok(seq);
    }
    if addr.event == EventType::RunCreated {
        let inserted = or_internal!(
            client.update(&plans.insert_run, Some(1), &[addr.run_id.into()]),
            "insert run"
        );
        if !inserted.is_empty() {
            return Ok(1);
        }
        // The run exists already (possibly created by a transaction we just
        // waited for): go on, the lifecycle check names the duplicate.
    }
    let run = lock_run(client, plans, addr);
    let entity = entity_state(client, plans, addr, &run);
    decide(client, plans, addr, run, entity)
}

/// Reads one column (by attribute number, 0: absent) of the trigger's row
/// as text, through its type's output function: a built-in one, since
/// [`log_shape::check`] admitted the column's type.
unsafe fn column_text(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attno: Option<i16>,
) -> Option<String> {
    let attno = attno?;
    unsafe {
        let p = pg_sys::SPI_getvalue(tuple, desc, attno.into());
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

/// The trigger's table as `schema.name`, for errors.
fn trigger_table(trigger: &PgTrigger<'_>) -> String {
    match (trigger.table_schema(), trigger.table_name()) {
        (Ok(schema), Ok(name)) => format!("{schema}.{name}"),
        _ => "the event log".into(),
    }
}

/// BEFORE INSERT … FOR EACH ROW (ENABLE ALWAYS) on `workflow_ext.events`
/// and on every table `attach` put under the extension: validates the row
/// against the lifecycle, reading state from the table it fires on, and
/// stamps `seq` (and `id` when NULL). Columns are found by name, so the
/// DevKit's varchar columns and extra columns (`payload_cbor`,
/// `spec_version`) need nothing; a `payload` is checked when it is jsonb.
#[pg_trigger(sql = false)] // declared in sql/functions.sql
fn events_before_insert<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, Infallible> {
    let data = trigger.trigger_data();
    let tuple = data.tg_trigtuple;
    // SAFETY: a row-level INSERT trigger always has a relation and a tuple.
    let rel = data.tg_relation;
    let desc = unsafe { (*rel).rd_att };
    // Before any value is read or any statement runs: the columns' types
    // decide which functions both call (src/log_shape.rs).
    // SAFETY: the open relation's descriptor.
    let cols = or_raise!(unsafe {
        log_shape::check(desc, &|| trigger_table(trigger), log_shape::Use::Log)
    });
    let (id, run_id, corr, type_name, seq, payload) = unsafe {
        let mut is_null = true;
        let payload = match cols.attno("payload") {
            Some(n) => pg_sys::SPI_getbinval(tuple, desc, n.into(), &mut is_null),
            None => pg_sys::Datum::from(0),
        };
        (
            column_text(tuple, desc, cols.attno("id")),
            column_text(tuple, desc, cols.attno("run_id")),
            column_text(tuple, desc, cols.attno("correlation_id")),
            column_text(tuple, desc, cols.attno("type")),
            column_text(tuple, desc, cols.attno("seq")),
            (!is_null).then(|| Payload::from_jsonb_datum(payload)),
        )
    };

    let verdict = (|| {
        let addr = validate::address(run_id.as_deref(), corr.as_deref(), type_name.as_deref())?;
        validate::optional_ident("id", id.as_deref())?;
        if let Some(p) = payload {
            p.check()?;
        }
        // SAFETY: an open relation's OID.
        let rel_oid = unsafe { (*rel).rd_id };
        let seq_assigned = match crate::batch::admit_if_reserved(rel_oid, &addr)? {
            // A batch row the batch's lock already covers: no statement.
            Some(seq) => seq,
            None => Spi::connect_mut(|client| {
                // SAFETY: the trigger's relation is open for the whole call.
                let plans = unsafe { log_plans(client, rel) };
                lock_and_decide(client, &plans, &addr)
            })?,
        };
        match seq.as_deref().and_then(|s| s.parse::<i64>().ok()) {
            Some(given) if given != seq_assigned => Err(WfError::SeqMismatch {
                given,
                next: seq_assigned,
            }),
            _ => Ok(seq_assigned),
        }
    })();
    let seq_assigned = match verdict {
        Ok(seq) => {
            metrics::count_appended();
            seq
        }
        Err(e) => {
            metrics::count_refused(match &e {
                WfError::Refused { violation, .. } => Some(*violation),
                _ => None,
            });
            raise!(e)
        }
    };

    let mut row = trigger
        .new()
        .unwrap_or_else(|| internal!("INSERT trigger without NEW"))
        .into_owned();
    let stamped = row
        .set_by_name("seq", seq_assigned)
        .and_then(|()| match id {
            Some(_) => Ok(()),
            None => row.set_by_name("id", event_id::next()),
        });
    or_internal!(stamped, "cannot stamp event row");
    Ok(Some(row))
}

/// Arguments shared by both append functions, validated.
fn checked_args<'a>(
    run_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    type_name: Option<&'a str>,
    payload: Option<Payload>,
) -> WfResult<EventAddress<'a>> {
    let addr = validate::address(run_id, correlation_id, type_name)?;
    if let Some(p) = payload {
        p.check()?;
    }
    Ok(addr)
}

/// Appends the creation event `type` for (`run_id`, `correlation_id`) unless
/// it exists; either way returns the stored event. Any number of racing
/// callers: one row, one `inserted = true`, the same `event_id` for all.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn append_suspension_event(
    run_id: Option<&str>,
    correlation_id: Option<&str>,
    r#type: Option<&str>,
    payload: default!(Option<Payload>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(event_id, String),
        name!(seq, i64),
        name!(inserted, bool),
    ),
> {
    let addr = or_raise!(checked_args(run_id, correlation_id, r#type, payload));
    let Some(plan) = suspension_index(addr.event) else {
        raise!(WfError::NotSuspension { event: addr.event })
    };
    refuse_if_read_only(c"append_suspension_event");
    // A creation already stored (a redelivery): one index probe, no
    // statement (src/creation_probe.rs).
    // SAFETY: in the function's transaction; `addr.event` is a suspension
    // type.
    let probed =
        unsafe { crate::creation_probe::find(addr.run_id, addr.correlation_id, addr.event) };
    let absent = match probed {
        Probe::Found(id, seq) => return TableIterator::once((id, seq, false)),
        Probe::Absent => true,
        Probe::NotAsked => false,
    };
    let row = Spi::connect_mut(|client| {
        with_append_plans(client, |c, plans| {
            // The probe read the index and found nothing: the INSERT alone,
            // where the type has one (`AppendPlans::insert`).
            let alone = plans.insert[plan].as_ref().filter(|_| absent);
            let args = [
                addr.run_id.into(),
                addr.correlation_id.into(),
                payload.into(),
            ];
            // Otherwise one statement that returns a committed creation as
            // it is (the log is append-only, so a duplicate takes no lock at
            // all) or inserts the row. Either way the row passes the trigger.
            let (statement, what) = match alone {
                Some(insert) => (insert, "insert"),
                None => (&plans.find_or_insert[plan], "append"),
            };
            let rows = or_internal!(c.update(statement, Some(1), &args), "{what}");
            if !rows.is_empty() {
                let row = rows.first();
                return (
                    required(&row, 1, "event id"),
                    required(&row, 2, "event seq"),
                    // The INSERT alone returns only the row it inserted.
                    alone.is_some() || required(&row, 3, "inserted"),
                );
            }
            // Skipped on conflict: the winner has committed (READ COMMITTED
            // waited for it), so this new snapshot sees its row.
            let (id, seq) = creation_probe::stored_creation(c, &addr)
                .unwrap_or_else(|| internal!("conflicting creation event is not visible"));
            (id, seq, false)
        })
    });
    TableIterator::once(row)
}

/// `type` text → the enum label, with this extension's errors (22004 for
/// NULL, 22023 naming an unknown type) instead of the enum input's 22P02.
/// Used by `append_event` (sql/functions.sql), whose body is one INSERT:
/// every other rule is the trigger's.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn checked_event_type(r#type: Option<&str>) -> &'static str {
    or_raise!(validate::event_type(r#type)).as_str()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn suspend(run: &str, corr: Option<&str>, t: &str) -> (String, i64, bool) {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_event($1, $2, $3)",
                    None,
                    &[run.into(), corr.into(), t.into()],
                )?
                .first();
            Ok::<_, pgrx::spi::SpiError>((row.get(1)?.unwrap(), row.get(2)?.unwrap(), row.get(3)?.unwrap()))
        })
        .unwrap()
    }

    fn append(run: &str, corr: Option<&str>, t: &str) -> i64 {
        Spi::get_one_with_args::<i64>(
            "SELECT seq FROM workflow_ext.append_event($1, $2, $3)",
            &[run.into(), corr.into(), t.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn suspension_appends_once_and_returns_the_stored_event() {
        let first = suspend("r", None, "run_created");
        assert_eq!((first.1, first.2), (1, true));
        let again = suspend("r", None, "run_created");
        assert_eq!(again, (first.0.clone(), 1, false));
        let step = suspend("r", Some("step_1"), "step_created");
        assert_eq!((step.1, step.2), (2, true));
        assert_eq!(
            suspend("r", Some("step_1"), "step_created"),
            (step.0, 2, false)
        );
        let rows =
            Spi::get_one::<i64>("SELECT count(*) FROM workflow_ext.events WHERE run_id = 'r'");
        assert_eq!(rows, Ok(Some(2)));
    }

    #[pg_test]
    fn seq_is_dense_across_both_functions_and_raw_inserts() {
        suspend("r", None, "run_created");
        append("r", None, "run_started");
        suspend("r", Some("s"), "step_created");
        Spi::run("INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('r', 's', 'step_started')")
            .unwrap();
        assert_eq!(append("r", Some("s"), "step_completed"), 5);
        let dense = Spi::get_one::<bool>(
            "SELECT array_agg(seq ORDER BY seq) = ARRAY[1,2,3,4,5]::bigint[] FROM workflow_ext.events WHERE run_id = 'r'",
        );
        assert_eq!(dense, Ok(Some(true)));
    }

    #[pg_test(error = "step_created refused: run \"nope\" has no run_created event")]
    fn creation_without_run_is_refused() {
        suspend("nope", Some("s"), "step_created");
    }

    #[pg_test(
        error = "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique\""
    )]
    fn strict_duplicate_creation_names_the_index() {
        suspend("r", None, "run_created");
        append("r", Some("s"), "step_created");
        append("r", Some("s"), "step_created");
    }

    #[pg_test(error = "step_started refused: step \"s\" of run \"r\" is already completed")]
    fn late_start_after_completion_is_refused() {
        suspend("r", None, "run_created");
        append("r", None, "run_started");
        for t in [
            "step_created",
            "step_started",
            "step_completed",
            "step_started",
        ] {
            append("r", Some("s"), t);
        }
    }

    #[pg_test(error = "step_started refused: step \"s\" of run \"r\" is already completed")]
    fn raw_insert_is_checked_like_append_event() {
        suspend("r", None, "run_created");
        for t in [
            "step_created",
            "step_started",
            "step_completed",
            "step_started",
        ] {
            Spi::run_with_args(
                "INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('r', 's', $1::workflow_ext.event_type)",
                &[t.into()],
            )
            .unwrap();
        }
    }

    #[pg_test(error = "run_id must not be null")]
    fn null_run_id_is_refused() {
        suspend_null_run();
    }

    fn suspend_null_run() {
        Spi::run("SELECT workflow_ext.append_suspension_event(NULL, 's', 'step_created')").unwrap();
    }

    #[pg_test(error = "cannot update workflow_ext.events")]
    fn update_is_refused() {
        suspend("r", None, "run_created");
        Spi::run("UPDATE workflow_ext.events SET payload = '{}'").unwrap();
    }

    #[pg_test(error = "cannot delete from workflow_ext.events")]
    fn delete_is_refused_under_replica_role() {
        suspend("r", None, "run_created");
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run("DELETE FROM workflow_ext.events").unwrap();
    }
}
