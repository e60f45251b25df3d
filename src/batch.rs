//! Batch creation: `append_suspension_events`, what one suspension with
//! `Promise.all` over many steps needs.
//!
//! Each element means what `append_suspension_event` means (idempotent per
//! key, the same validation, the same race guarantees), and the whole batch
//! is one INSERT statement, so a bad element anywhere writes nothing. The
//! rows pass the same BEFORE INSERT trigger as every other append
//! ([`crate::append`]); what makes a batch cheap is that the trigger locks
//! the run **once** for it instead of once per row:
//!
//! - before its INSERT, the function announces the batch (an [`Intent`]:
//!   the run and the distinct keys, in order) in backend memory that only
//!   this module writes, and takes it back right after (also on error);
//! - the first row of the batch, in the trigger, locks the run row and
//!   reserves one seq per key in one statement, reading under the lock which
//!   keys exist already ([`Intent::lock`]); unused seqs are given back at
//!   once, so the seqs stay dense;
//! - each new key's row then gets the next reserved seq and the lifecycle's
//!   verdict ([`lifecycle::check`], the same rule as every append) on the
//!   run state read under the lock, which no one else can change while the
//!   lock is held, and which creations do not change;
//! - a row the announcement does not describe (a key that exists already,
//!   another append to the run from a nested trigger) takes the ordinary
//!   path, after any unused reservation is given back.
//!
//! A run_created in the batch, a run without its row, or a table other than
//! `workflow_ext.events` turn the announcement off: every row then takes the
//! ordinary path, which names the error.

use crate::append::{refused, required, stored_creation, SUSPENSION_TYPES};
use crate::errors::{internal, or_internal, or_raise, WfError, WfResult};
use crate::lifecycle::{self, EventType, State};
use crate::payload::Payload;
use crate::plans::{self, EQ, INT8, MINUS, PLUS, TEXT, TEXTARRAY};
use crate::subxact::{refuse_if_read_only, uses_transaction_snapshot};
use crate::validate::{self, EventAddress};
use pgrx::datum::{AnyArray, DatumWithOid, FromDatum};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

/// A batch announced by [`append_suspension_events`] to the trigger.
pub(crate) struct Intent {
    /// `workflow_ext.events`, the only log the batch writes.
    log: pg_sys::Oid,
    run_id: String,
    /// The distinct keys, in input order: the INSERT's rows, in its order.
    keys: Vec<(EventType, String)>,
    /// The key the next row of the batch must have.
    next: usize,
    lock: Lock,
}

enum Lock {
    /// The first row has not arrived yet.
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
    /// Give back $2 reserved seqs.
    give_back: OwnedPreparedStatement,
    /// The INSERT of the batch's new keys ($5: their ordinals).
    insert: OwnedPreparedStatement,
}

thread_local! {
    static INTENT: RefCell<Option<Intent>> = const { RefCell::new(None) };
    static PLANS: OnceCell<BatchPlans> = const { OnceCell::new() };
}

/// (`ROWS FROM (unnest(a), unnest(b))` is what `unnest(a, b)` means; only
/// the unqualified spelling has that shorthand.)
///
/// Ordinals of the keys (correlation ids `$c`, types `$t`) that have a
/// creation in the run `$1`: the suspension type itself, or for a hook the
/// hook_conflict recorded in its place.
fn existing_sql(c: &str, t: &str) -> String {
    format!(
        "SELECT coalesce(pg_catalog.array_agg(k.n), '{{}}') \
           FROM ROWS FROM (pg_catalog.unnest({c}::pg_catalog.text[]), pg_catalog.unnest({t}::pg_catalog.text[])) \
                WITH ORDINALITY k(c, t, n) \
          WHERE EXISTS (SELECT FROM workflow_ext.events e \
                         WHERE e.run_id {EQ} $1 AND e.correlation_id {EQ} k.c \
                           AND e.type::pg_catalog.text {EQ} ANY \
                               (ARRAY[k.t, CASE WHEN k.t {EQ} 'hook_created' THEN 'hook_conflict' END]))"
    )
}

fn build_plans(c: &SpiClient<'_>) -> BatchPlans {
    let log = format!("log {EQ} 'workflow_ext.events'::pg_catalog.regclass");
    let creation_types = plans::type_list(SUSPENSION_TYPES);
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
        give_back: plans::keep(
            c,
            &format!(
                "UPDATE workflow_ext.runs SET last_seq = last_seq {MINUS} $2 WHERE {log} AND run_id {EQ} $1"
            ),
            &[TEXT, INT8],
        ),
        insert: plans::keep(
            c,
            &format!(
                "INSERT INTO workflow_ext.events (run_id, correlation_id, type, payload) \
                 SELECT $1, u.c, u.t::workflow_ext.event_type, u.p \
                   FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), \
                                   pg_catalog.unnest($4::pg_catalog.jsonb[])) WITH ORDINALITY u(c, t, p, n) \
                  WHERE u.n {EQ} ANY ($5::pg_catalog.int8[]) ORDER BY u.n \
                 ON CONFLICT (run_id, correlation_id, type) WHERE type {EQ} ANY ({creation_types}) DO NOTHING \
                 RETURNING correlation_id, type::pg_catalog.text, id, seq"
            ),
            &[TEXT, TEXTARRAY, TEXTARRAY, plans::JSONBARRAY, plans::INT8ARRAY],
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
pub(crate) fn admit(
    client: &mut SpiClient<'_>,
    rel: pg_sys::Oid,
    addr: &EventAddress<'_>,
) -> WfResult<Option<i64>> {
    let Some(mut intent) = INTENT.with(|i| i.borrow_mut().take()) else {
        return Ok(None);
    };
    // Put back before any error can leave this frame: the function's guard
    // clears it at the end of the statement either way.
    let verdict = intent.admit(client, rel, addr);
    INTENT.with(|i| *i.borrow_mut() = Some(intent));
    verdict
}

/// The common case of a batch row, decided without a statement: the run is
/// locked for the batch and the row is its next new key. `None` (nothing
/// consumed): the trigger connects to SPI and goes through [`admit`].
pub(crate) fn admit_reserved(rel: pg_sys::Oid, addr: &EventAddress<'_>) -> WfResult<Option<i64>> {
    INTENT.with(|i| {
        let mut i = i.borrow_mut();
        let Some(intent) = i.as_mut() else {
            return Ok(None);
        };
        let key = intent.next;
        let reserved = rel == intent.log
            && addr.run_id == intent.run_id
            && intent.keys.get(key).map(|(t, c)| (*t, Some(c.as_str())))
                == Some((addr.event, addr.correlation_id))
            && matches!(&intent.lock, Lock::Held { existing, .. } if !existing[key]);
        if !reserved {
            return Ok(None);
        }
        intent.next += 1;
        intent.take_reserved(addr).map(Some)
    })
}

impl Intent {
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
        lifecycle::check(Some(*state), None, addr.event)
            .map_err(|v| refused(addr, v, Some(*state)))?;
        let seq = *next_seq;
        *next_seq = next_seq
            .checked_add(1)
            .unwrap_or_else(|| internal!("seq overflow"));
        *unused -= 1;
        Ok(seq)
    }

    fn admit(
        &mut self,
        client: &mut SpiClient<'_>,
        rel: pg_sys::Oid,
        addr: &EventAddress<'_>,
    ) -> WfResult<Option<i64>> {
        if rel != self.log || addr.run_id != self.run_id {
            return Ok(None);
        }
        let expected = self.keys.get(self.next);
        if expected.map(|(t, c)| (*t, Some(c.as_str()))) != Some((addr.event, addr.correlation_id))
        {
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
            self.lock = self.lock(client);
        }
        match &self.lock {
            Lock::Held { existing, .. } if !existing[key] => self.take_reserved(addr).map(Some),
            // A key that exists: the ordinary path reads it again and hands
            // it to the index. No run row: the ordinary path names the error.
            _ => Ok(None),
        }
    }

    /// The first row: lock the run, reserve a seq per key, learn which keys
    /// exist; give back at once the seqs of the keys that exist.
    fn lock(&self, client: &mut SpiClient<'_>) -> Lock {
        let n = i64::try_from(self.keys.len()).unwrap_or_else(|_| internal!("batch too large"));
        let (corrs, types) = self.key_arrays();
        with_plans(client, |c, p| {
            let rows = or_internal!(
                c.update(
                    &p.lock_and_reserve,
                    Some(1),
                    &[
                        self.run_id.as_str().into(),
                        n.into(),
                        corrs.clone().into(),
                        types.clone().into()
                    ]
                ),
                "lock run for batch"
            );
            if rows.is_empty() {
                // No run row (or, under REPEATABLE READ, one this snapshot
                // cannot see): the ordinary path names the error.
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
            let first = before + 1; // before < last: no overflow
            if seen != Some(before) && !uses_transaction_snapshot() {
                // Someone appended to the run after this statement's
                // snapshot: read the keys again, now that the lock is held.
                ordinals = required(
                    &or_internal!(
                        c.update(
                            &p.existing,
                            Some(1),
                            &[self.run_id.as_str().into(), corrs.into(), types.into()]
                        ),
                        "existing keys"
                    )
                    .first(),
                    1,
                    "existing keys",
                );
            }
            let mut existing = vec![false; self.keys.len()];
            for o in ordinals {
                let i = o
                    .checked_sub(1)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < existing.len())
                    .unwrap_or_else(|| internal!("bad ordinal {o}"));
                existing[i] = true;
            }
            let found = existing.iter().filter(|e| **e).count() as i64;
            if found > 0 {
                or_internal!(
                    c.update(
                        &p.give_back,
                        None,
                        &[self.run_id.as_str().into(), found.into()]
                    ),
                    "give back seqs"
                );
            }
            Lock::Held {
                state,
                next_seq: first,
                unused: n - found,
                existing,
            }
        })
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

    fn key_arrays(&self) -> (Vec<String>, Vec<String>) {
        self.keys
            .iter()
            .map(|(t, c)| (c.clone(), t.as_str().to_string()))
            .unzip()
    }
}

/// Announces an intent for the duration of one statement; takes it back
/// when dropped, also when the statement fails.
struct Announced;

impl Announced {
    fn new(intent: Intent) -> Option<Self> {
        INTENT.with(|i| {
            let mut i = i.borrow_mut();
            // Never nest: an inner batch takes the ordinary path.
            i.is_none().then(|| {
                *i = Some(intent);
                Announced
            })
        })
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
        let addr = validate::address(run_id, batch.corrs[i].as_deref(), batch.types[i].as_deref())?;
        if let Some(p) = batch.payloads[i] {
            p.check()?;
        }
        if !SUSPENSION_TYPES.contains(&addr.event) {
            return Err(WfError::NotSuspension { event: addr.event });
        }
    }
    Ok(batch)
}

/// `append_suspension_event` for each element, in one statement; one row
/// per input element, in input order. A key given twice is created once:
/// its first row says `inserted`, the others return the same event.
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
    // The distinct keys, first occurrence first, and each element's key.
    let mut first: HashMap<(EventType, Option<&str>), usize> = HashMap::new();
    let mut keys: Vec<(EventType, Option<&str>)> = Vec::new();
    let mut ordinals: Vec<i64> = Vec::new();
    let element_key: Vec<usize> = (0..batch.types.len())
        .map(|i| {
            let t = EventType::parse(batch.types[i].as_deref().unwrap_or_default())
                .unwrap_or_else(|| internal!("type checked"));
            let k = (t, batch.corrs[i].as_deref());
            *first.entry(k).or_insert_with(|| {
                keys.push(k);
                ordinals.push(i as i64 + 1);
                keys.len() - 1
            })
        })
        .collect();
    let corrs = batch.corrs.clone();
    let types = batch.types.clone();
    let payloads = batch.payloads.clone();

    let stored: Vec<(String, i64, bool)> = Spi::connect_mut(|client| {
        // SAFETY: plain catalog lookups by name.
        let log = unsafe {
            let ns = pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), false);
            pg_sys::get_relname_relid(c"events".as_ptr(), ns)
        };
        let announced = if keys.iter().all(|(t, _)| *t != EventType::RunCreated) {
            Announced::new(Intent {
                log,
                run_id: run_id.to_string(),
                keys: keys
                    .iter()
                    .map(|(t, c)| (*t, c.unwrap_or_default().to_string()))
                    .collect(),
                next: 0,
                lock: Lock::NotYet,
            })
        } else {
            None
        };
        let mut inserted: HashMap<(String, Option<String>), (String, i64)> = HashMap::new();
        with_plans(client, |c, p| {
            // SAFETY: a jsonb[] built from jsonb datums of the arguments.
            let payload_arg = unsafe { DatumWithOid::new(payloads, pg_sys::JSONBARRAYOID) };
            let rows = or_internal!(
                c.update(
                    &p.insert,
                    None,
                    &[
                        run_id.into(),
                        corrs.into(),
                        types.into(),
                        payload_arg,
                        ordinals.into()
                    ]
                ),
                "batch insert"
            );
            for row in rows {
                let corr: Option<String> = or_internal!(row.get(1), "correlation id");
                let t: String = or_internal!(row.get(2), "type").unwrap_or_default();
                let id: String = or_internal!(row.get(3), "event id").unwrap_or_default();
                let seq: i64 = or_internal!(row.get(4), "seq").unwrap_or_default();
                inserted.insert((t, corr), (id, seq));
            }
        });
        if let Some(a) = announced {
            a.finish();
        }
        // Each distinct key's stored event: inserted now, or read back (it
        // existed, or a racer's row was committed first: READ COMMITTED
        // waited for it, so this new snapshot sees it).
        keys.iter()
            .map(|(t, corr)| {
                match inserted.remove(&(t.as_str().to_string(), corr.map(str::to_string))) {
                    Some((id, seq)) => (id, seq, true),
                    None => {
                        let addr = EventAddress {
                            run_id,
                            correlation_id: *corr,
                            event: *t,
                        };
                        let (id, seq) = stored_creation(client, &addr).unwrap_or_else(|| {
                            internal!("conflicting creation event is not visible")
                        });
                        (id, seq, false)
                    }
                }
            })
            .collect()
    });
    let mut told = vec![false; keys.len()];
    let rows: Vec<_> = element_key
        .iter()
        .zip(batch.corrs)
        .map(|(&k, corr)| {
            let (id, seq, inserted) = &stored[k];
            let first_time = !std::mem::replace(&mut told[k], true);
            (corr, id.clone(), *seq, *inserted && first_time)
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
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
        // Lock, give back the seq of the existing key, and the existing
        // key's own bump and unbump on the ordinary path.
        assert_eq!(run_row_updates() - before, 4);
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
