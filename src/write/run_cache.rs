//! The runs this transaction has locked, and their state, in backend
//! memory: what makes many appends to a run in one transaction (a COPY, an
//! `INSERT … SELECT`, a loop of appends) cost one run-row update each
//! instead of one per row.
//!
//! The first append to a run in a transaction locks its row in
//! `workflow_ext.runs` as always ([`super::core`]), and the state and
//! last seq it read under that lock are kept here. The lock is held to the
//! end of the transaction and every other append to the run waits for it,
//! so nothing but this transaction can change the run until then: its next
//! appends take their seq and run state from here, with no statement, and
//! the run rows that changed are written back in one statement just before
//! the transaction commits or prepares ([`write_back`]). Why: the versions
//! one transaction makes of one row cannot be pruned until it ends, so
//! updating the row once per append made each update slower than the last
//! (n appends cost O(n²)).
//!
//! What is accepted or refused does not change: the run state is the one
//! the row would hold, and an entity's state is still read from the log.
//! What this memory holds is undone with what it describes: a rolled back
//! subtransaction restores the entries it changed (and forgets the runs it
//! locked, whose lock went with it); the end of the transaction forgets
//! everything.
//!
//! Until the write-back, the run rows of this transaction's runs show the
//! state of its first append to each: the extension's functions that read
//! or write run rows ([`settle`] callers) write back first; `metrics()`
//! and `stuck_runs()` called in the writing transaction itself see that
//! earlier state (other sessions see none of it before the commit, as
//! always).

use crate::errors::or_internal;
use crate::pg::owner::as_role;
use crate::pg::plans::{self, BOOL, BOOLARRAY, EQ, INT8, INT8ARRAY, TEXT, TEXTARRAY};
use crate::rules::lifecycle::{EntityKind, EventType, State};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;

/// A run this transaction holds locked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Held {
    pub state: State,
    pub last_seq: i64,
}

#[derive(Clone, Copy)]
struct Entry {
    now: Held,
    /// What the run row holds (the last statement that wrote it).
    stored: Held,
    /// The subtransaction that last changed the entry.
    changed_in: pg_sys::SubTransactionId,
}

/// An entry as it was before a subtransaction first changed it (None: the
/// run was not held).
struct Undo {
    subxact: pg_sys::SubTransactionId,
    log: pg_sys::Oid,
    run_id: String,
    before: Option<Entry>,
}

#[derive(Default)]
struct Cache {
    runs: HashMap<pg_sys::Oid, HashMap<String, Entry>>,
    undo: Vec<Undo>,
    copied: CopiedEntities,
    /// The role the write path runs as (the events trigger's definer, the
    /// extension's owner): the write-back runs as it.
    writer: Option<pg_sys::Oid>,
}

/// What one `COPY … FROM` has decided of the entities of the runs it
/// holds ([`crate::pg::row_origin`]): their last event, for the COPY's next
/// rows. Nothing else writes to a held run while the COPY runs, and every
/// row the COPY's trigger accepts is stored or the COPY fails, so this is
/// what the log would answer. Forgotten with anything that could make it
/// wrong: another COPY, a row of any other statement into the log while
/// the COPY runs, a write-back, a rolled-back (sub)transaction.
#[derive(Default)]
struct CopiedEntities {
    /// The COPY it describes (its number in this backend).
    copy: u64,
    /// log → run → what the COPY stored of it.
    last: HashMap<pg_sys::Oid, HashMap<String, CopiedRun>>,
    /// Runs and entities remembered, at most [`MAX_COPIED_ENTITIES`].
    count: usize,
}

#[derive(Default)]
struct CopiedRun {
    /// The COPY stored the run's run_created.
    created: bool,
    /// Per entity kind (`EntityKind::ENTITIES` order): correlation id →
    /// the entity's last event.
    entities: [HashMap<String, EventType>; EntityKind::ENTITIES.len()],
}

/// About 100 MB of backend memory at most; past it, a COPY reads the
/// further entities from the log as any other statement does.
const MAX_COPIED_ENTITIES: usize = 1_000_000;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// The write-back, one plan per run-row key (see [`plans::runs_keyed_by_log`]).
    static WRITE_BACK: RefCell<[Option<OwnedPreparedStatement>; 2]> = const { RefCell::new([None, None]) };
    /// The same for one run, by parameters.
    static WRITE_BACK_ONE: RefCell<[Option<OwnedPreparedStatement>; 2]> = const { RefCell::new([None, None]) };
}

fn current_subxact() -> pg_sys::SubTransactionId {
    // SAFETY: a read of the backend's transaction state.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// The run `run_id` of `log`, if this transaction holds it.
pub(crate) fn held(log: pg_sys::Oid, run_id: &str) -> Option<Held> {
    CACHE.with(|c| c.borrow().runs.get(&log)?.get(run_id).map(|e| e.now))
}

/// Records the run this transaction just locked, as its row now stands.
pub(crate) fn hold(log: pg_sys::Oid, run_id: &str, stored: Held) {
    set(log, run_id, stored, Some(stored));
}

/// The run after this transaction's append to it, which the row will hold
/// at the write-back.
pub(crate) fn advance(log: pg_sys::Oid, run_id: &str, now: Held) {
    set(log, run_id, now, None);
}

/// Sets the run's entry to `now`; `stored`: what its row holds, if a
/// statement just wrote it (else as before).
fn set(log: pg_sys::Oid, run_id: &str, now: Held, stored: Option<Held>) {
    let subxact = current_subxact();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.writer.is_none() {
            // SAFETY: a read of the backend's current user id.
            c.writer = Some(unsafe { pg_sys::GetUserId() });
        }
        let before = c.runs.get(&log).and_then(|m| m.get(run_id)).copied();
        // The top transaction's own changes need no undo: its end forgets
        // everything.
        // SAFETY: a read of the backend's transaction state.
        if unsafe { pg_sys::IsSubTransaction() } && before.is_none_or(|b| b.changed_in != subxact) {
            c.undo.push(Undo {
                subxact,
                log,
                run_id: run_id.to_owned(),
                before,
            });
        }
        let entry = Entry {
            now,
            stored: stored.or(before.map(|b| b.stored)).unwrap_or(now),
            changed_in: subxact,
        };
        let runs = c.runs.entry(log).or_default();
        match runs.get_mut(run_id) {
            Some(e) => *e = entry,
            None => {
                runs.insert(run_id.to_owned(), entry);
            }
        }
    });
}

/// The last event the COPY `copy` stored for an entity of a run this
/// transaction holds: `Some(None)` when the COPY created the run and stored
/// no event of the entity; `None`: not known here, read the log.
pub(crate) fn copied_entity(
    copy: u64,
    log: pg_sys::Oid,
    run_id: &str,
    slot: usize,
    corr: &str,
) -> Option<Option<EventType>> {
    CACHE.with(|c| {
        let c = c.borrow();
        if c.copied.copy != copy {
            return None;
        }
        let run = c.copied.last.get(&log)?.get(run_id)?;
        match run.entities.get(slot)?.get(corr) {
            Some(last) => Some(Some(*last)),
            // Every event of a run the COPY created went through this map.
            None if run.created => Some(None),
            None => None,
        }
    })
}

/// Remembers that the COPY `copy` stored `event`: of the entity `entity`
/// (kind slot, correlation id), or, for a run-level event, of the run
/// (what counts is whether it created the run).
pub(crate) fn remember_copied(
    copy: u64,
    log: pg_sys::Oid,
    run_id: &str,
    entity: Option<(usize, &str)>,
    event: EventType,
) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let copied = &mut c.copied;
        if copied.copy != copy {
            *copied = CopiedEntities {
                copy,
                ..CopiedEntities::default()
            };
        }
        // Past the limit, nothing new is remembered; what is kept stays
        // true (a run that then stores an entity it cannot add is no longer
        // known whole).
        let full = copied.count >= MAX_COPIED_ENTITIES;
        let count = &mut copied.count;
        let runs = copied.last.entry(log).or_default();
        if !runs.contains_key(run_id) {
            if full {
                return;
            }
            *count += 1;
            runs.insert(run_id.to_owned(), CopiedRun::default());
        }
        let Some(run) = runs.get_mut(run_id) else {
            return;
        };
        match entity {
            None => run.created |= event == EventType::RunCreated,
            Some((slot, corr)) => match run.entities[slot].get_mut(corr) {
                Some(last) => *last = event,
                None if full => run.created = false,
                None => {
                    run.entities[slot].insert(corr.to_owned(), event);
                    *count += 1;
                }
            },
        }
    });
}

/// Forgets what any COPY decided of entities.
pub(crate) fn forget_copied() {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.copied.count > 0 {
            c.copied = CopiedEntities::default();
        }
    });
}

/// A subtransaction rolled back: its changes (and those of its committed
/// children) are undone, newest first.
pub(crate) fn subtransaction_aborted(subxact: pg_sys::SubTransactionId) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.copied = CopiedEntities::default();
        while let Some(u) = c.undo.pop_if(|u| u.subxact >= subxact) {
            let runs = c.runs.entry(u.log).or_default();
            match u.before {
                Some(e) => {
                    runs.insert(u.run_id, e);
                }
                None => {
                    runs.remove(&u.run_id);
                }
            }
        }
    });
}

/// The transaction ended (committed, prepared or rolled back): its locks
/// are gone, and with them what this memory may know.
pub(crate) fn transaction_ended() {
    super::skipped::transaction_ended();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        // Keep the allocations of a big transaction out of the next one.
        if c.runs.len() > 64 || c.undo.capacity() > 4096 || c.copied.count > 0 {
            *c = Cache::default();
        } else {
            c.runs.clear();
            c.undo.clear();
            c.writer = None;
        }
    });
}

/// Writes the changed runs back to their rows in one statement, and
/// forgets every run (the rows are current again): before the commit, and
/// before any of the extension's functions reads or writes run rows in the
/// same transaction. The locks stay with the transaction.
pub(crate) fn settle() {
    let (changed, writer) = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.copied = CopiedEntities::default();
        let mut changed: Vec<Changed> = Vec::new();
        for (log, runs) in c.runs.drain() {
            for (run_id, e) in runs {
                if e.now != e.stored {
                    changed.push((log, run_id, e));
                }
            }
        }
        c.undo.clear();
        (changed, c.writer)
    });
    if changed.is_empty() {
        return;
    }
    // The extension was dropped in this transaction, its run rows with it.
    if !runs_table_exists() {
        return;
    }
    let writer =
        writer.unwrap_or_else(|| crate::errors::internal!("changed runs without a writer"));
    write_back(&changed, writer);
}

fn runs_table_exists() -> bool {
    // SAFETY: catalog lookups by name; InvalidOid when missing.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), true);
        nsp != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"runs".as_ptr(), nsp) != pg_sys::InvalidOid
    }
}

/// One UPDATE of every changed run row, as the write path's role (the rows
/// are internal), with the columns the per-append statements set: last_seq,
/// state, finished_at (kept, or set now, for a terminal state; else NULL)
/// and last_event_at. A row whose last_seq is no longer the one this
/// transaction wrote was replaced by another statement of the same
/// transaction (detach and attach again) and is left as that one wrote it.
/// The runs of a shard of a distributed log are in the run table's
/// co-located shard ([`crate::pg::citus`]): one UPDATE per such shard.
fn write_back(changed: &[Changed], writer: pg_sys::Oid) {
    let mut local: Vec<&Changed> = Vec::new();
    // (the run table's shard, the log's key) → its changed runs
    let mut sharded: HashMap<(String, String), Vec<&Changed>> = HashMap::new();
    for c in changed {
        match crate::write::core::shard_runs(c.0) {
            Some(home) => sharded.entry(home).or_default().push(c),
            None => local.push(c),
        }
    }
    as_role(writer, || {
        Spi::connect_mut(|client| {
            if !local.is_empty() {
                write_back_local(client, &local);
            }
            for ((table, key), rows) in &sharded {
                let sql = format!(
                    "UPDATE {table} r SET last_seq = u.seq, state = u.state, \
                     finished_at = CASE WHEN u.terminal \
                                   THEN coalesce(r.finished_at, pg_catalog.now()) END, \
                     last_event_at = pg_catalog.now() \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                                     pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.bool[]), \
                                     pg_catalog.unnest($5::pg_catalog.int8[])) \
                          u(run_id, seq, state, terminal, stored) \
                     WHERE r.log {EQ} {key} AND r.run_id {EQ} u.run_id AND r.last_seq {EQ} u.stored"
                );
                let args = columns(rows);
                or_internal!(
                    client.update(
                        &sql,
                        None,
                        &[
                            args.1.into(),
                            args.2.into(),
                            args.3.into(),
                            args.4.into(),
                            args.5.into()
                        ]
                    ),
                    "write back shard runs"
                );
            }
        })
    });
}

/// A run whose row the write-back updates: (log, run_id, entry).
type Changed = (pg_sys::Oid, String, Entry);

type Columns<'a> = (
    Vec<i64>,
    Vec<&'a str>,
    Vec<i64>,
    Vec<&'a str>,
    Vec<bool>,
    Vec<i64>,
);

/// The write-back's arrays: log, run_id, seq, state, terminal, stored seq.
fn columns<'a>(changed: &[&'a Changed]) -> Columns<'a> {
    (
        changed
            .iter()
            .map(|(l, ..)| i64::from(l.to_u32()))
            .collect(),
        changed.iter().map(|(_, r, _)| r.as_str()).collect(),
        changed.iter().map(|(.., e)| e.now.last_seq).collect(),
        changed.iter().map(|(.., e)| e.now.state.as_str()).collect(),
        changed
            .iter()
            .map(|(.., e)| e.now.state.is_terminal())
            .collect(),
        changed.iter().map(|(.., e)| e.stored.last_seq).collect(),
    )
}

/// The write-back of the runs in `workflow_ext.runs`, a kept plan: one
/// run by parameters (most transactions change one), more by arrays.
fn write_back_local(client: &mut pgrx::spi::SpiClient<'_>, changed: &[&Changed]) {
    let keyed = plans::runs_keyed_by_log();
    if let [(log, run_id, e)] = changed {
        WRITE_BACK_ONE.with(|w| {
            let mut w = w.borrow_mut();
            let plan = w[usize::from(keyed)].get_or_insert_with(|| {
                let (key, touch) = if keyed {
                    (
                        format!("r.log {EQ} $1::pg_catalog.oid::pg_catalog.regclass AND"),
                        ", last_event_at = pg_catalog.now()",
                    )
                } else {
                    (String::new(), "")
                };
                plans::keep(
                    client,
                    &format!(
                        "UPDATE workflow_ext.runs r SET last_seq = $3, state = $4, \
                         finished_at = CASE WHEN $5 \
                                       THEN coalesce(r.finished_at, pg_catalog.now()) END{touch} \
                         WHERE {key} r.run_id {EQ} $2 AND r.last_seq {EQ} $6"
                    ),
                    &[INT8, TEXT, INT8, TEXT, BOOL, INT8],
                )
            });
            let args = [
                i64::from(log.to_u32()).into(),
                run_id.as_str().into(),
                e.now.last_seq.into(),
                e.now.state.as_str().into(),
                e.now.state.is_terminal().into(),
                e.stored.last_seq.into(),
            ];
            or_internal!(client.update(&*plan, None, &args), "write back run");
        });
        return;
    }
    let (logs, run_ids, seqs, states, terminal, stored) = columns(changed);
    WRITE_BACK.with(|w| {
        let mut w = w.borrow_mut();
        let plan = w[usize::from(keyed)].get_or_insert_with(|| {
            let (key, touch) = if keyed {
                (
                    format!("r.log {EQ} u.log::pg_catalog.oid::pg_catalog.regclass AND"),
                    ", last_event_at = pg_catalog.now()",
                )
            } else {
                (String::new(), "")
            };
            plans::keep(
                client,
                &format!(
                    "UPDATE workflow_ext.runs r SET last_seq = u.seq, state = u.state, \
                     finished_at = CASE WHEN u.terminal \
                                   THEN coalesce(r.finished_at, pg_catalog.now()) END{touch} \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]), \
                                     pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                                     pg_catalog.unnest($5::pg_catalog.bool[]), pg_catalog.unnest($6::pg_catalog.int8[])) \
                          u(log, run_id, seq, state, terminal, stored) \
                     WHERE {key} r.run_id {EQ} u.run_id AND r.last_seq {EQ} u.stored"
                ),
                &[INT8ARRAY, TEXTARRAY, INT8ARRAY, TEXTARRAY, BOOLARRAY, INT8ARRAY],
            )
        });
        let args = [
            logs.into(),
            run_ids.into(),
            seqs.into(),
            states.into(),
            terminal.into(),
            stored.into(),
        ];
        or_internal!(client.update(&*plan, None, &args), "write back runs");
    });
}

/// Ties this memory to the transaction's edges (from `_PG_init`).
pub(crate) fn register() {
    static EDGES: crate::pg::transaction::TransactionEdges =
        crate::pg::transaction::TransactionEdges {
            before_commit: settle,
            before_prepare: settle,
            ended: transaction_ended,
            subtransaction_aborted,
        };
    crate::pg::transaction::on_transaction_edges(&EDGES);
}
