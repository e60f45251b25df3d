//! Batch creation: `append_suspension_events`, what one suspension with
//! `Promise.all` over many steps needs.
//!
//! Each element means what `append_suspension_event` means (idempotent per
//! key, the same validation, the same race guarantees), and the whole batch
//! is one INSERT statement, so a bad element anywhere writes nothing. The
//! rows pass the same BEFORE INSERT trigger as every other append
//! ([`crate::write::core`]); what makes a batch cheap is that the run is locked
//! **once** for it instead of once per row:
//!
//! - before its INSERT, the function locks the run row and reserves one seq
//!   per key in one statement, reading under the lock which keys exist
//!   already ([`lock_for_batch`]); their seqs are given back at once, so
//!   the seqs stay dense, and they are left out of the INSERT: a key that
//!   exists costs a lookup, not a row through the trigger (whose ordinary
//!   path would update the run row twice per key, and one row updated many
//!   times in one transaction makes each update slower than the last);
//! - it announces the rest (an [`Intent`]: the run and the new keys, in
//!   order) in backend memory that only this module writes, and takes it
//!   back right after the INSERT (also on error);
//! - each new key's row then gets the next reserved seq and the lifecycle's
//!   verdict ([`lifecycle::check`], the same rule as every append) on the
//!   run state read under the lock, which no one else can change while the
//!   lock is held, and which creations do not change;
//! - a row the announcement does not describe (another append to the run
//!   from a nested trigger) takes the ordinary path, after any unused
//!   reservation is given back.
//!
//! The function takes the lock as the extension's owner, as the trigger
//! does, and only for a caller whose plain INSERT would have it taken (who
//! may insert into and read the whole log, without row security). For any
//! other caller the keys the statement's snapshot shows stored are left
//! out, and the batch's first row takes the lock in the trigger, reading
//! the same way which keys exist (one created since the snapshot takes the
//! ordinary path).
//!
//! A run_created in the batch, a run without its row, or a batch inside
//! another batch's INSERT are not announced: the keys the statement's
//! snapshot shows stored are left out all the same, and every other row
//! takes the ordinary path, which names the error.
//!
//! A batch has at most [`MAX_BATCH_EVENTS`] elements.

use crate::errors::{internal, or_internal, or_raise, WfError, WfResult};
use crate::pg::index_scan::own_log_and_index;
use crate::pg::owner::{as_role, owner_of};
use crate::pg::payload::Payload;
use crate::pg::plans::required;
use crate::pg::plans::{self, EQ, INT8, MINUS, PLUS, TEXT, TEXTARRAY};
use crate::pg::transaction::{refuse_if_read_only, uses_transaction_snapshot};
use crate::rules::lifecycle::{self, EventType, State};
use crate::rules::validate::{self, EventAddress};
use crate::write::creation_probe::stored_creation;
use pgrx::datum::{AnyArray, DatumWithOid, FromDatum};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

/// Most elements one `append_suspension_events` call takes. A batch is one
/// statement that keeps its run locked until the transaction ends (every
/// other append to the run waits) and holds every element, and the answer
/// for each, in backend memory: the limit bounds both for one call, far
/// above the fan-out of one suspension; a larger one is split by the caller
/// (each key is idempotent, so the calls store what one call would).
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// A batch announced by [`append_suspension_events`] to the trigger.
pub(crate) struct Intent {
    /// `workflow_ext.events`, the only log the batch writes.
    log: pg_sys::Oid,
    run_id: String,
    /// The keys not known to exist, in input order: the INSERT's rows, in
    /// its order.
    keys: Vec<(EventType, String)>,
    /// The key the next row of the batch must have.
    next: usize,
    lock: Lock,
}

enum Lock {
    /// Not taken by the function: the batch's first row takes it, in the
    /// trigger.
    NotYet,
    /// The run is locked by this transaction for the batch.
    Held {
        state: State,
        /// The next reserved seq, and how many reserved seqs are left.
        next_seq: i64,
        unused: i64,
        /// Per key: it had a creation when the lock was granted.
        existing: Vec<bool>,
    },
    /// Every remaining row takes the ordinary path.
    Off,
}

struct BatchPlans {
    /// Lock the run and reserve $2 seqs; return its state, the new
    /// last_seq, what this statement's snapshot said of last_seq, and the
    /// ordinals of the keys ($3 correlation ids, $4 types) that exist.
    lock_and_reserve: OwnedPreparedStatement,
    /// The same ordinals, read in a fresh snapshot ($1 run, $2, $3).
    existing: OwnedPreparedStatement,
    /// The stored creations of keys ($1 run, $2 correlation ids, $3
    /// types): ordinal, event id and seq of each key that has one.
    stored: OwnedPreparedStatement,
    /// Give back $2 reserved seqs.
    give_back: OwnedPreparedStatement,
    /// The INSERT of the batch's new keys ($2 to $4: theirs alone, in order).
    insert: OwnedPreparedStatement,
}

thread_local! {
    static INTENT: RefCell<Option<Intent>> = const { RefCell::new(None) };
    static PLANS: OnceCell<BatchPlans> = const { OnceCell::new() };
}

/// The condition that the event `e` is the creation of the key `k` (its
/// correlation id `k.c`, its type `k.t`) in the run `$1`: the suspension
/// type itself, or for a hook the hook_conflict recorded in its place.
fn is_creation_of_key() -> String {
    format!(
        "e.run_id {EQ} $1 AND e.correlation_id {EQ} k.c \
         AND e.type::pg_catalog.text {EQ} ANY \
             (ARRAY[k.t, CASE WHEN k.t {EQ} 'hook_created' THEN 'hook_conflict' END])"
    )
}

/// The keys (correlation ids `$c`, types `$t`) with their ordinals, `k`.
/// (`ROWS FROM (unnest(a), unnest(b))` is what `unnest(a, b)` means; only
/// the unqualified spelling has that shorthand.)
fn keys_sql(c: &str, t: &str) -> String {
    format!(
        "ROWS FROM (pg_catalog.unnest({c}::pg_catalog.text[]), pg_catalog.unnest({t}::pg_catalog.text[])) \
         WITH ORDINALITY k(c, t, n)"
    )
}

/// Ordinals of the keys (correlation ids `$c`, types `$t`) that have a
/// creation in the run `$1`.
fn existing_sql(c: &str, t: &str) -> String {
    format!(
        "SELECT coalesce(pg_catalog.array_agg(k.n), '{{}}') FROM {} \
          WHERE EXISTS (SELECT FROM workflow_ext.events e WHERE {})",
        keys_sql(c, t),
        is_creation_of_key()
    )
}

fn build_plans(c: &SpiClient<'_>) -> BatchPlans {
    let log = format!("log {EQ} 'workflow_ext.events'::pg_catalog.regclass");
    let creation_types = plans::type_list(EventType::SUSPENSIONS);
    BatchPlans {
        lock_and_reserve: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs r SET last_seq = r.last_seq {PLUS} $2, last_event_at = pg_catalog.now() \
                  WHERE r.{log} AND r.run_id {EQ} $1 \
                 RETURNING r.state, r.last_seq, \
                   (SELECT s.last_seq FROM workflow_ext.runs s WHERE s.{log} AND s.run_id {EQ} $1), ({})",
                existing_sql("$3", "$4")
            ),
            &[TEXT, INT8, TEXTARRAY, TEXTARRAY],
        ),
        existing: plans::keep(c, &existing_sql("$2", "$3"), &[TEXT, TEXTARRAY, TEXTARRAY]),
        stored: plans::keep(
            c,
            &format!(
                "SELECT k.n, f.id, f.seq FROM {}, \
                        LATERAL (SELECT e.id::pg_catalog.text AS id, e.seq FROM workflow_ext.events e \
                                  WHERE {} ORDER BY e.seq LIMIT 1) f",
                keys_sql("$2", "$3"),
                is_creation_of_key()
            ),
            &[TEXT, TEXTARRAY, TEXTARRAY],
        ),
        give_back: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs SET last_seq = last_seq {MINUS} $2 WHERE {log} AND run_id {EQ} $1"
            ),
            &[TEXT, INT8],
        ),
        insert: plans::keep(
            c,
            // Inside a CTE: Citus counts the rows an INSERT … SELECT into a
            // distributed log sent, not those it returned (an ON CONFLICT
            // skip), which SPI refuses as inconsistent; the outer SELECT
            // counts what it returns.
            &format!(
                "WITH i AS (INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload) \
                 SELECT $1, u.c, u.t::workflow_ext.event_type, u.p \
                   FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), \
                                   pg_catalog.unnest($4::pg_catalog.jsonb[])) WITH ORDINALITY u(c, t, p, n) \
                  ORDER BY u.n \
                 ON CONFLICT (run_id, correlation_id, type) WHERE type {EQ} ANY ({creation_types}) DO NOTHING \
                 RETURNING correlation_id, type::pg_catalog.text, id, seq) \
                 SELECT i.correlation_id, i.type, i.id, i.seq FROM i"
            ),
            &[TEXT, TEXTARRAY, TEXTARRAY, plans::JSONBARRAY],
        ),
    }
}

fn with_plans<R>(
    client: &mut SpiClient<'_>,
    f: impl FnOnce(&mut SpiClient<'_>, &BatchPlans) -> R,
) -> R {
    PLANS.with(|cell| {
        let p = cell.get_or_init(|| build_plans(client));
        f(client, p)
    })
}

/// Called by the trigger for every row before its ordinary path:
/// `Some(seq)` when the row is the announced batch's next new key, admitted
/// here; `None`: take the ordinary path.
pub(crate) fn admit_if_announced(
    client: &mut SpiClient<'_>,
    rel: pg_sys::Oid,
    addr: &EventAddress<'_>,
) -> WfResult<Option<i64>> {
    let Some(mut intent) = INTENT.with(|i| i.borrow_mut().take()) else {
        return Ok(None);
    };
    // Put back before any error can leave this frame: the function's guard
    // clears it at the end of the statement either way.
    let verdict = intent.admit_announced(client, rel, addr);
    INTENT.with(|i| *i.borrow_mut() = Some(intent));
    verdict
}

/// The common case of a batch row, decided without a statement: the run is
/// locked for the batch and the row is its next new key. `None` (nothing
/// consumed): the trigger connects to SPI and goes through
/// [`admit_if_announced`].
pub(crate) fn admit_if_reserved(
    rel: pg_sys::Oid,
    addr: &EventAddress<'_>,
) -> WfResult<Option<i64>> {
    INTENT.with(|i| {
        let mut i = i.borrow_mut();
        let Some(intent) = i.as_mut() else {
            return Ok(None);
        };
        let key = intent.next;
        let reserved = intent.is_next(rel, addr)
            && matches!(&intent.lock, Lock::Held { existing, .. } if !existing[key]);
        if !reserved {
            return Ok(None);
        }
        intent.next += 1;
        intent.take_reserved(addr).map(Some)
    })
}

impl Intent {
    /// `addr` is the row the batch's INSERT gives next.
    fn is_next(&self, rel: pg_sys::Oid, addr: &EventAddress<'_>) -> bool {
        rel == self.log
            && addr.run_id == self.run_id
            && self
                .keys
                .get(self.next)
                .map(|(t, c)| (*t, Some(c.as_str())))
                == Some((addr.event, addr.correlation_id))
    }

    /// The next reserved seq for `addr`, a new key of the batch, after the
    /// lifecycle's verdict on the run state read under the lock.
    fn take_reserved(&mut self, addr: &EventAddress<'_>) -> WfResult<i64> {
        let Lock::Held {
            state,
            next_seq,
            unused,
            ..
        } = &mut self.lock
        else {
            internal!("batch row without the batch's lock")
        };
        lifecycle::check_addressed(
            Some(*state),
            None,
            addr.event,
            addr.correlation_id.is_some(),
        )
        .map_err(|v| addr.refused(v, Some(*state)))?;
        let seq = *next_seq;
        *next_seq = next_seq
            .checked_add(1)
            .unwrap_or_else(|| internal!("seq overflow"));
        *unused -= 1;
        Ok(seq)
    }

    fn admit_announced(
        &mut self,
        client: &mut SpiClient<'_>,
        rel: pg_sys::Oid,
        addr: &EventAddress<'_>,
    ) -> WfResult<Option<i64>> {
        if rel != self.log || addr.run_id != self.run_id {
            return Ok(None);
        }
        if !self.is_next(rel, addr) {
            // Another append to this run while the batch is in flight: give
            // the reservation back so the ordinary path's seq follows the
            // last one handed out, and step aside for the rest.
            self.give_back(client);
            self.lock = Lock::Off;
            return Ok(None);
        }
        let key = self.next;
        self.next += 1;
        if matches!(self.lock, Lock::NotYet) {
            self.lock = lock_for_batch(client, &self.run_id, &self.keys);
        }
        match &self.lock {
            Lock::Held { existing, .. } if !existing[key] => self.take_reserved(addr).map(Some),
            // A key created since the function's snapshot: the ordinary
            // path reads it again and hands it to the index. No run row: the
            // ordinary path names the error.
            _ => Ok(None),
        }
    }

    fn give_back(&mut self, client: &mut SpiClient<'_>) {
        if let Lock::Held { unused, .. } = &mut self.lock {
            if *unused > 0 {
                let k = *unused;
                with_plans(client, |c, p| {
                    or_internal!(
                        c.update(&p.give_back, None, &[self.run_id.as_str().into(), k.into()]),
                        "give back seqs"
                    );
                });
                *unused = 0;
            }
        }
    }
}

/// One distinct key of a batch: its type, its correlation id and the
/// payload of its first element.
#[derive(Clone, Copy)]
struct Key<'a> {
    event: EventType,
    corr: Option<&'a str>,
    payload: Option<Payload>,
}

/// The keys' correlation ids and type names, as the statements take them.
fn key_arrays<'a>(keys: &[Key<'a>]) -> (Vec<Option<&'a str>>, Vec<&'static str>) {
    keys.iter()
        .map(|k| {
            check_for_interrupts!();
            (k.corr, k.event.as_str())
        })
        .unzip()
}

/// Locks the run `run_id` of `workflow_ext.events`, reserves a seq per key
/// and learns which keys exist; gives back at once the seqs of those.
/// [`Lock::Off`]: no run row (or, under REPEATABLE READ, one this snapshot
/// cannot see), for the ordinary path to name the error.
fn lock_for_batch(client: &mut SpiClient<'_>, run_id: &str, keys: &[(EventType, String)]) -> Lock {
    let n = i64::try_from(keys.len()).unwrap_or_else(|_| internal!("batch too large"));
    let (corrs, types): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .map(|(t, c)| {
            check_for_interrupts!();
            (c.as_str(), t.as_str())
        })
        .unzip();
    with_plans(client, |c, p| {
        let rows = or_internal!(
            c.update(
                &p.lock_and_reserve,
                Some(1),
                &[
                    run_id.into(),
                    n.into(),
                    corrs.clone().into(),
                    types.clone().into()
                ]
            ),
            "lock run for batch"
        );
        if rows.is_empty() {
            return Lock::Off;
        }
        let row = rows.first();
        let state: String = required(&row, 1, "run state");
        let last: i64 = required(&row, 2, "run seq");
        let seen: Option<i64> = or_internal!(row.get(3), "snapshot seq");
        let mut ordinals: Vec<i64> = required(&row, 4, "existing keys");
        let state = State::parse(lifecycle::EntityKind::Run, &state)
            .unwrap_or_else(|| internal!("run state \"{state}\" is not a run state"));
        let before = last
            .checked_sub(n)
            .unwrap_or_else(|| internal!("run seq {last} below the reservation"));
        if seen != Some(before) && !uses_transaction_snapshot() {
            // Someone appended to the run after this statement's snapshot:
            // read the keys again, now that the lock is held.
            ordinals = required(
                &or_internal!(
                    c.update(
                        &p.existing,
                        Some(1),
                        &[run_id.into(), corrs.into(), types.into()]
                    ),
                    "existing keys"
                )
                .first(),
                1,
                "existing keys",
            );
        }
        let mut existing = vec![false; keys.len()];
        for o in ordinals {
            check_for_interrupts!();
            existing[key_index(o, keys.len())] = true;
        }
        let found = existing.iter().filter(|e| **e).count() as i64;
        if found > 0 {
            or_internal!(
                c.update(&p.give_back, None, &[run_id.into(), found.into()]),
                "give back seqs"
            );
        }
        Lock::Held {
            state,
            next_seq: before + 1, // before < last: no overflow
            unused: n - found,
            existing,
        }
    })
}

/// The 0-based index of the key with (1-based) ordinal `o` among `len`.
fn key_index(o: i64, len: usize) -> usize {
    o.checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < len)
        .unwrap_or_else(|| internal!("bad ordinal {o}"))
}

/// The stored creation (event id, seq) of each of `keys` that has one, in
/// one statement, by index into `keys`.
fn stored_creations(
    client: &mut SpiClient<'_>,
    run_id: &str,
    keys: &[Key<'_>],
) -> HashMap<usize, (String, i64)> {
    let (corrs, types) = key_arrays(keys);
    with_plans(client, |c, p| {
        let rows = or_internal!(
            c.update(
                &p.stored,
                None,
                &[run_id.into(), corrs.into(), types.into()]
            ),
            "stored creations"
        );
        rows.map(|row| {
            check_for_interrupts!();
            // Selected from NOT NULL columns and the ordinality.
            let n: i64 = or_internal!(row.get(1), "key ordinal").unwrap_or_default();
            let id: String = or_internal!(row.get(2), "event id").unwrap_or_default();
            let seq: i64 = or_internal!(row.get(3), "event seq").unwrap_or_default();
            (key_index(n, keys.len()), (id, seq))
        })
        .collect()
    })
}

/// Announces an intent for the duration of one statement; takes it back
/// when dropped, also when the statement fails.
struct Announced;

impl Announced {
    /// Whether a batch is announced already: this call runs inside its
    /// INSERT (a trigger of the user's), and takes the ordinary path.
    fn nested() -> bool {
        INTENT.with(|i| i.borrow().is_some())
    }

    fn new(intent: Intent) -> Self {
        INTENT.with(|i| {
            let mut i = i.borrow_mut();
            if i.is_some() {
                internal!("nested batch announcement");
            }
            *i = Some(intent);
        });
        Announced
    }

    /// Takes the intent back; the batch must have used every seq it kept.
    fn finish(self) {
        let intent = INTENT.with(|i| i.borrow_mut().take());
        std::mem::forget(self);
        if let Some(Intent {
            lock: Lock::Held { unused, .. },
            ..
        }) = intent
        {
            if unused != 0 {
                internal!("batch left {unused} reserved seq(s) unused");
            }
        }
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        INTENT.with(|i| i.borrow_mut().take());
    }
}

/// Element count and dimensions of an array argument.
fn shape(a: &AnyArray) -> (usize, i32) {
    // SAFETY: the argument is declared as an array type in SQL; detoasting
    // gives an ArrayType whose header we only read.
    unsafe {
        let p = pg_sys::pg_detoast_datum(a.datum().cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let ndim = (*p).ndim;
        // ARR_DIMS: the dimensions follow the fixed header.
        let dims = std::slice::from_raw_parts(
            (p as *const u8).add(std::mem::size_of::<pg_sys::ArrayType>()) as *const i32,
            usize::try_from(ndim).unwrap_or(0),
        );
        let n = dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?));
        (
            if ndim == 0 {
                0
            } else {
                n.unwrap_or(usize::MAX)
            },
            ndim,
        )
    }
}

fn texts(a: &AnyArray) -> Vec<Option<String>> {
    // SAFETY: declared text[] in SQL.
    unsafe { Vec::<Option<String>>::from_datum(a.datum(), false) }.unwrap_or_default()
}

/// The batch's arguments, checked as `append_suspension_event` checks each.
struct Batch {
    corrs: Vec<Option<String>>,
    types: Vec<Option<String>>,
    payloads: Vec<Option<Payload>>,
}

fn checked_batch(
    run_id: Option<&str>,
    correlation_ids: Option<AnyArray>,
    types: Option<AnyArray>,
    payloads: Option<AnyArray>,
) -> WfResult<Batch> {
    let Some(types) = types else {
        return Err(WfError::NullArgument { arg: "types" });
    };
    let Some(corrs) = correlation_ids else {
        return Err(WfError::NullArgument {
            arg: "correlation_ids",
        });
    };
    let (nc, dc) = shape(&corrs);
    let (nt, dt) = shape(&types);
    let p = payloads.as_ref().map(shape);
    if dc > 1
        || dt > 1
        || p.is_some_and(|(_, d)| d > 1)
        || nc != nt
        || p.is_some_and(|(n, _)| n != nt)
    {
        return Err(WfError::BatchArraysMismatch {
            correlation_ids: nc,
            types: nt,
            payloads: p.map(|(n, _)| n),
        });
    }
    // From the headers alone, before any element is read.
    if nt > MAX_BATCH_EVENTS {
        return Err(WfError::BatchTooLarge {
            events: nt,
            limit: MAX_BATCH_EVENTS,
        });
    }
    let payloads: Vec<Option<Payload>> = match payloads {
        // SAFETY: declared jsonb[] in SQL.
        Some(a) => unsafe { Vec::<Option<pg_sys::Datum>>::from_datum(a.datum(), false) }
            .unwrap_or_default()
            .into_iter()
            // SAFETY: elements of a jsonb[].
            .map(|d| d.map(|d| unsafe { Payload::from_jsonb_datum(d) }))
            .collect(),
        None => vec![None; nt],
    };
    let batch = Batch {
        corrs: texts(&corrs),
        types: texts(&types),
        payloads,
    };
    for i in 0..nt {
        check_for_interrupts!();
        let addr = validate::address(run_id, batch.corrs[i].as_deref(), batch.types[i].as_deref())?;
        if let Some(p) = batch.payloads[i] {
            p.check()?;
        }
        if !EventType::SUSPENSIONS.contains(&addr.event) {
            return Err(WfError::NotSuspension { event: addr.event });
        }
    }
    Ok(batch)
}

/// `append_suspension_event` for each element, in one statement; one row
/// per input element, in input order. A key given twice is created once:
/// its first row says `inserted`, the others return the same event. At most
/// [`MAX_BATCH_EVENTS`] elements.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn append_suspension_events(
    run_id: Option<&str>,
    correlation_ids: Option<AnyArray>,
    types: Option<AnyArray>,
    payloads: default!(Option<AnyArray>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(correlation_id, Option<String>),
        name!(event_id, String),
        name!(seq, i64),
        name!(inserted, bool),
    ),
> {
    let batch = or_raise!(checked_batch(run_id, correlation_ids, types, payloads));
    if batch.types.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let run_id = run_id.unwrap_or_else(|| internal!("run_id checked"));
    refuse_if_read_only(c"append_suspension_events");
    // The batch locks its run with its own statement, on the run row.
    crate::write::run_cache::settle();
    // The distinct keys, first occurrence first, and each element's key.
    let mut first: HashMap<(EventType, Option<&str>), usize> = HashMap::new();
    let mut keys: Vec<Key<'_>> = Vec::new();
    let element_key: Vec<usize> = (0..batch.types.len())
        .map(|i| {
            check_for_interrupts!();
            let t = EventType::parse(batch.types[i].as_deref().unwrap_or_default())
                .unwrap_or_else(|| internal!("type checked"));
            let corr = batch.corrs[i].as_deref();
            *first.entry((t, corr)).or_insert_with(|| {
                keys.push(Key {
                    event: t,
                    corr,
                    payload: batch.payloads[i],
                });
                keys.len() - 1
            })
        })
        .collect();

    // SAFETY: plain catalog lookups by name.
    let (log, runs) = unsafe {
        let ns = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), false);
        (
            pg_sys::get_relname_relid(c"events".as_ptr(), ns),
            pg_sys::get_relname_relid(c"runs".as_ptr(), ns),
        )
    };
    let announce = keys.iter().all(|k| k.event != EventType::RunCreated) && !Announced::nested();
    // The function locks the run itself, before its INSERT, when the caller
    // could have the lock taken by a plain INSERT anyway: it may insert into
    // and read the whole log, without row security. It takes it as the
    // extension's owner, as the trigger does. Otherwise the batch's first
    // row takes it, in the trigger.
    let lock_here = announce
        // SAFETY: in the function's transaction.
        && unsafe {
            own_log_and_index(
                c"workflow_events_entity_creation_unique",
                &[pg_sys::ACL_SELECT, pg_sys::ACL_INSERT],
            )
        }
        .is_some();
    let owner = if lock_here { owner_of(runs) } else { None };

    let stored: Vec<(String, i64, bool)> = Spi::connect_mut(|client| {
        let intent_keys = |which: &[usize]| -> Vec<(EventType, String)> {
            which
                .iter()
                .map(|&i| (keys[i].event, keys[i].corr.unwrap_or_default().to_string()))
                .collect()
        };
        // Each key's event and whether this call inserted it. The keys that
        // exist stay out of the INSERT (read back, each costs a lookup, not
        // a row through the trigger): those the run has under the lock when
        // it is taken here, else those the statement's snapshot shows (for
        // good: the log is append-only).
        let mut events: Vec<Option<(String, i64, bool)>> = vec![None; keys.len()];
        let all: Vec<usize> = (0..keys.len()).collect();
        let mut intent = None;
        let locked = owner
            .map(|owner| as_role(owner, || lock_for_batch(client, run_id, &intent_keys(&all))));
        let new: Vec<usize> = match locked {
            Some(Lock::Held {
                state,
                next_seq,
                unused,
                existing,
            }) => {
                let (new, found): (Vec<usize>, Vec<usize>) =
                    all.into_iter().partition(|&i| !existing[i]);
                if !found.is_empty() {
                    read_back(client, run_id, &keys, &found, &mut events);
                }
                intent = Some(Intent {
                    log,
                    run_id: run_id.to_string(),
                    keys: intent_keys(&new),
                    next: 0,
                    lock: Lock::Held {
                        state,
                        next_seq,
                        unused,
                        existing: vec![false; new.len()],
                    },
                });
                new
            }
            // No run row: every row takes the ordinary path, which names
            // the error.
            Some(_) => all,
            None => {
                read_back(client, run_id, &keys, &all, &mut events);
                let new: Vec<usize> = all.into_iter().filter(|&i| events[i].is_none()).collect();
                if announce {
                    intent = Some(Intent {
                        log,
                        run_id: run_id.to_string(),
                        keys: intent_keys(&new),
                        next: 0,
                        lock: Lock::NotYet,
                    });
                }
                new
            }
        };
        let announced = intent.map(Announced::new);
        if !new.is_empty() {
            let new_keys: Vec<Key<'_>> = new.iter().map(|&i| keys[i]).collect();
            let (corrs, types) = key_arrays(&new_keys);
            let payloads: Vec<Option<Payload>> = new_keys.iter().map(|k| k.payload).collect();
            let mut inserted: HashMap<(String, Option<String>), (String, i64)> = HashMap::new();
            with_plans(client, |c, p| {
                // SAFETY: a jsonb[] built from jsonb datums of the arguments.
                let payload_arg = unsafe { DatumWithOid::new(payloads, pg_sys::JSONBARRAYOID) };
                let rows = or_internal!(
                    c.update(
                        &p.insert,
                        None,
                        &[run_id.into(), corrs.into(), types.into(), payload_arg]
                    ),
                    "batch insert"
                );
                for row in rows {
                    check_for_interrupts!();
                    let corr: Option<String> = or_internal!(row.get(1), "correlation id");
                    let t: String = or_internal!(row.get(2), "type").unwrap_or_default();
                    let id: String = or_internal!(row.get(3), "event id").unwrap_or_default();
                    let seq: i64 = or_internal!(row.get(4), "seq").unwrap_or_default();
                    inserted.insert((t, corr), (id, seq));
                }
            });
            for &i in &new {
                check_for_interrupts!();
                let k = &keys[i];
                let key = (k.event.as_str().to_string(), k.corr.map(str::to_string));
                events[i] = inserted.remove(&key).map(|(id, seq)| (id, seq, true));
            }
            // A new key the INSERT skipped: a racer's row was committed
            // first (READ COMMITTED waited for it, so a new snapshot sees it).
            let skipped: Vec<usize> = new.into_iter().filter(|&i| events[i].is_none()).collect();
            if !skipped.is_empty() {
                read_back(client, run_id, &keys, &skipped, &mut events);
            }
        }
        if let Some(a) = announced {
            a.finish();
        }
        events
            .into_iter()
            .map(|e| e.unwrap_or_else(|| internal!("conflicting creation event is not visible")))
            .collect()
    });
    let mut told = vec![false; keys.len()];
    let rows: Vec<_> = element_key
        .iter()
        .zip(batch.corrs)
        .map(|(&k, corr)| {
            check_for_interrupts!();
            let (id, seq, inserted) = &stored[k];
            let first_time = !std::mem::replace(&mut told[k], true);
            (corr, id.clone(), *seq, *inserted && first_time)
        })
        .collect();
    TableIterator::new(rows)
}

/// Fills in `events` the stored creation of each key `keys[i]`, `i` in
/// `which`, that has one (`inserted` false): one statement for the keyed
/// creations, one lookup per run_created.
fn read_back(
    client: &mut SpiClient<'_>,
    run_id: &str,
    keys: &[Key<'_>],
    which: &[usize],
    events: &mut [Option<(String, i64, bool)>],
) {
    let (keyed, runs): (Vec<usize>, Vec<usize>) =
        which.iter().partition(|&&i| keys[i].corr.is_some());
    if !keyed.is_empty() {
        let subset: Vec<Key<'_>> = keyed.iter().map(|&i| keys[i]).collect();
        for (j, (id, seq)) in stored_creations(client, run_id, &subset) {
            events[keyed[j]] = Some((id, seq, false));
        }
    }
    for i in runs {
        let addr = EventAddress {
            run_id,
            correlation_id: None,
            event: keys[i].event,
        };
        events[i] = stored_creation(client, &addr).map(|(id, seq)| (id, seq, false));
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::MAX_BATCH_EVENTS;
    use crate::pg::transaction::in_subtransaction;
    use pgrx::pg_sys::panic::CaughtError;
    use pgrx::prelude::*;

    fn batch(run: &str, corrs: &[&str]) -> Vec<(String, i64, bool)> {
        let corrs: Vec<String> = corrs.iter().map(|s| s.to_string()).collect();
        let types: Vec<String> = corrs.iter().map(|_| "step_created".to_string()).collect();
        Spi::connect(|c| {
            c.select(
                "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_events($1, $2, $3)",
                None,
                &[run.into(), corrs.into(), types.into()],
            )?
            .map(|r| Ok((r.get(1)?.unwrap(), r.get(2)?.unwrap(), r.get(3)?.unwrap())))
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
        .unwrap()
    }

    fn create_run(run: &str) {
        Spi::run_with_args(
            "SELECT workflow_ext.append_suspension_event($1, NULL, 'run_created')",
            &[run.into()],
        )
        .unwrap();
    }

    #[pg_test]
    fn batch_seqs_are_dense_and_in_input_order() {
        create_run("r");
        let got = batch("r", &["a", "b", "c"]);
        assert_eq!(
            got.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
            [(2, true), (3, true), (4, true)]
        );
        let last = Spi::get_one::<i64>("SELECT last_seq FROM workflow_ext.runs WHERE run_id = 'r'");
        assert_eq!(last, Ok(Some(4)));
    }

    #[pg_test]
    fn existing_keys_in_a_batch_give_their_seqs_back() {
        create_run("r");
        batch("r", &["b"]);
        let got = batch("r", &["a", "b", "c", "a"]);
        assert_eq!(
            got.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
            [(3, true), (2, false), (4, true), (3, false)]
        );
        assert_eq!(got[0].0, got[3].0);
        let dense = Spi::get_one::<bool>(
            "SELECT array_agg(seq ORDER BY seq) = ARRAY[1,2,3,4]::bigint[] \
               AND (SELECT last_seq FROM workflow_ext.runs WHERE run_id = 'r') = 4 \
               FROM workflow_ext.events WHERE run_id = 'r'",
        );
        assert_eq!(dense, Ok(Some(true)));
        // The next single append follows on.
        let next = Spi::get_one::<i64>(
            "SELECT seq FROM workflow_ext.append_event('r', 'a', 'step_started')",
        );
        assert_eq!(next, Ok(Some(5)));
    }

    /// Row updates of workflow_ext.runs in this transaction so far.
    fn run_row_updates() -> i64 {
        Spi::get_one::<i64>(
            "SELECT n_tup_upd FROM pg_stat_xact_all_tables WHERE relid = 'workflow_ext.runs'::regclass",
        )
        .unwrap()
        .unwrap_or(0)
    }

    #[pg_test]
    fn a_batch_locks_its_run_once() {
        create_run("r");
        let keys: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let before = run_row_updates();
        assert_eq!(batch("r", &keys).len(), 50);
        // One lock-and-reserve for 50 rows (the per-row path would bump 50 times).
        assert_eq!(run_row_updates() - before, 1);
        let before = run_row_updates();
        batch("r", &["s1", "new"]);
        // Lock, and give back the seq of the existing key, which stays out
        // of the INSERT (the ordinary path would bump and unbump for it).
        assert_eq!(run_row_updates() - before, 2);
    }

    /// `n` distinct step keys.
    fn step_keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    fn events_of(run: &str) -> i64 {
        Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM workflow_ext.events WHERE run_id = $1",
            &[run.into()],
        )
        .unwrap()
        .unwrap_or(0)
    }

    #[pg_test]
    fn a_batch_over_the_maximum_is_refused_before_any_work() {
        create_run("r");
        let keys = step_keys(MAX_BATCH_EVENTS + 1);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let before = run_row_updates();
        let outcome = in_subtransaction(|| {
            batch("r", &keys);
        });
        let e = outcome.expect_err("a batch over the maximum must be refused");
        let (CaughtError::PostgresError(r) | CaughtError::ErrorReport(r)) = *e else {
            panic!("not an error report: {e:?}")
        };
        assert_eq!(
            r.sql_error_code(),
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED
        );
        assert_eq!(r.message(), "batch is too large");
        let detail = format!(
            "The batch has {} elements; at most {MAX_BATCH_EVENTS} are allowed.",
            keys.len()
        );
        assert_eq!(r.detail(), Some(detail.as_str()));
        assert!(r.hint().is_some_and(|h| h.contains("several calls")));
        // Refused from the arrays' headers: the run was not even locked.
        assert_eq!(run_row_updates(), before);
        assert_eq!(events_of("r"), 1);
    }

    #[pg_test]
    fn a_batch_of_the_maximum_is_taken_and_sent_again_inserts_nothing() {
        create_run("r");
        let keys = step_keys(MAX_BATCH_EVENTS);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let first = batch("r", &keys);
        assert_eq!(first.len(), MAX_BATCH_EVENTS);
        assert!(first.iter().all(|r| r.2));
        let before = run_row_updates();
        let again = batch("r", &keys);
        assert!(again.iter().all(|r| !r.2));
        assert_eq!(
            again.iter().map(|r| (&r.0, r.1)).collect::<Vec<_>>(),
            first.iter().map(|r| (&r.0, r.1)).collect::<Vec<_>>()
        );
        // Its keys never reach the trigger: the lock and the give-back are
        // the run row's only updates (per key, the ordinary path would bump
        // and unbump it: a cost that grows with each update of the row).
        assert_eq!(run_row_updates() - before, 2);
        assert_eq!(events_of("r"), 1 + MAX_BATCH_EVENTS as i64);
        let last = Spi::get_one::<i64>("SELECT last_seq FROM workflow_ext.runs WHERE run_id = 'r'");
        assert_eq!(last, Ok(Some(1 + MAX_BATCH_EVENTS as i64)));
    }

    /// For a caller under row security the function does not lock the run
    /// itself: its first row does, in the trigger, and the keys the
    /// statement's snapshot shows stored stay out of the INSERT all the same.
    #[pg_test]
    fn a_batch_under_row_security_is_locked_by_its_first_row() {
        create_run("r");
        let first = batch("r", &["a"]);
        Spi::run(
            "CREATE ROLE wfx_batch_rls; \
             GRANT USAGE ON SCHEMA workflow_ext TO wfx_batch_rls; \
             GRANT SELECT, INSERT ON workflow_ext.events TO wfx_batch_rls; \
             GRANT EXECUTE ON FUNCTION \
                 workflow_ext.append_suspension_events(text, text[], text[], jsonb[]) TO wfx_batch_rls; \
             ALTER TABLE workflow_ext.events ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY wfx_batch_rls ON workflow_ext.events USING (true) WITH CHECK (true)",
        )
        .unwrap();
        let before = run_row_updates();
        Spi::run("SET ROLE wfx_batch_rls").unwrap();
        let got = batch("r", &["a", "b", "c", "b"]);
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            got.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
            [(2, false), (3, true), (4, true), (3, false)]
        );
        assert_eq!(got[0].0, first[0].0);
        // One lock, by the first row, for the two new keys only.
        assert_eq!(run_row_updates() - before, 1);
    }

    /// A batch with its run_created is not announced; sent again, what the
    /// snapshot shows stored stays out of the INSERT all the same.
    #[pg_test]
    fn a_batch_with_its_run_created_sent_again_inserts_nothing() {
        let steps = step_keys(100);
        let corrs: Vec<Option<String>> = std::iter::once(None)
            .chain(steps.iter().cloned().map(Some))
            .collect();
        let types: Vec<String> = std::iter::once("run_created")
            .chain(steps.iter().map(|_| "step_created"))
            .map(str::to_string)
            .collect();
        let call = || -> Vec<(String, i64, bool)> {
            Spi::connect(|c| {
                c.select(
                    "SELECT event_id, seq, inserted FROM workflow_ext.append_suspension_events('q', $1, $2)",
                    None,
                    &[corrs.clone().into(), types.clone().into()],
                )?
                .map(|r| Ok((r.get(1)?.unwrap(), r.get(2)?.unwrap(), r.get(3)?.unwrap())))
                .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
            })
            .unwrap()
        };
        let first = call();
        assert!(first.iter().all(|r| r.2));
        // The first call's appends took the ordinary path: their run row is
        // written back before the commit (src/write/run_cache.rs), or
        // before the next batch: not the second call's doing.
        crate::write::run_cache::settle();
        let before = run_row_updates();
        let again = call();
        assert!(again.iter().all(|r| !r.2));
        assert_eq!(
            again.iter().map(|r| (&r.0, r.1)).collect::<Vec<_>>(),
            first.iter().map(|r| (&r.0, r.1)).collect::<Vec<_>>()
        );
        assert_eq!(run_row_updates() - before, 0);
        assert_eq!(events_of("q"), first.len() as i64);
    }

    #[pg_test(
        error = "step_created refused for step \"a\" of run \"r\": the run is already completed"
    )]
    fn batch_on_a_finished_run_is_refused() {
        create_run("r");
        for t in ["run_started", "run_completed"] {
            Spi::run_with_args(
                "SELECT workflow_ext.append_event('r', NULL, $1)",
                &[t.into()],
            )
            .unwrap();
        }
        batch("r", &["a"]);
    }
}
