//! `replay` and `scan`: stream a stored log through the auditor
//! ([`crate::audit`]) and return what is wrong. The source is the
//! extension's own table or any table shaped like the DevKit's
//! `workflow.workflow_events` (id, run_id, type, correlation_id, and
//! optionally seq and created_at).
//!
//! The source arrives as a `regclass`, i.e. an OID: its name is rendered by
//! PostgreSQL's own regclass output (quoted, schema-qualified), so no text
//! supplied by a caller is ever spliced into SQL. Both functions run as the
//! caller, so reading a source needs the caller's own SELECT right.
//!
//! Memory: rows come from a cursor [`BATCH`] at a time and each batch's tuple
//! table is freed before the next fetch, so a replay holds one batch plus
//! the auditor's per-entity state, however long the log is.

use crate::audit::{Auditor, Finding, Seq, StoredEvent, TOKEN_CONFLICT};
use crate::errors::{internal, or_internal, or_raise, raise, WfError, WfResult};
use crate::lifecycle::EventType;
use crate::log_scan::OwnLogScan;
use crate::plans;
use crate::validate;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgMemoryContexts;
use pgrx::PgOid;
use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, HashSet};

/// Rows fetched from the cursor at a time.
const BATCH: i64 = 1_000;

struct Source {
    /// Quoted, qualified name, from regclass output.
    name: String,
    has_seq: bool,
    has_created_at: bool,
    /// `run_id` is declared NOT NULL: the source has no NULL run.
    run_id_not_null: bool,
    /// A jsonb `payload` column: hook tokens can be read (the DevKit's 4.x
    /// rows keep their data in payload_cbor, which SQL cannot read).
    has_jsonb_payload: bool,
    /// The extension's own log, whose `type` is the enum: it is read as the
    /// enum's OID and named from these labels, instead of going through the
    /// enum's output and text's input twice per row.
    enum_labels: Option<Vec<(pg_sys::Oid, String)>>,
}

/// The catalog reads every call makes, prepared once per backend: they are
/// most of the fixed cost of a replay of a short run.
struct InspectPlans {
    source: OwnedPreparedStatement,
    labels: OwnedPreparedStatement,
}

thread_local! {
    static INSPECT_PLANS: OnceCell<InspectPlans> = const { OnceCell::new() };
}

fn with_inspect_plans<R>(client: &SpiClient<'_>, f: impl FnOnce(&InspectPlans) -> R) -> R {
    INSPECT_PLANS.with(|cell| {
        f(cell.get_or_init(|| InspectPlans {
            source: plans::keep(
                client,
                "SELECT c.oid::pg_catalog.regclass::text, c.relkind::text, \
                        pg_catalog.array_agg(a.attname::text) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), \
                        pg_catalog.bool_or(a.attname = 'payload' AND a.attnum > 0 AND NOT a.attisdropped \
                                           AND a.atttypid = 'pg_catalog.jsonb'::pg_catalog.regtype), \
                        pg_catalog.bool_or(a.attname = 'run_id' AND a.attnum > 0 AND NOT a.attisdropped \
                                           AND a.attnotnull) \
                 FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid = $1 GROUP BY c.oid, c.relkind",
                &[PgOid::BuiltIn(pg_sys::BuiltinOid::OIDOID)],
            ),
            labels: plans::keep(
                client,
                "SELECT e.oid, e.enumlabel::text FROM pg_catalog.pg_enum e \
                  WHERE e.enumtypid = 'workflow_ext.event_type'::pg_catalog.regtype",
                &[],
            ),
        }))
    })
}

fn inspect(client: &SpiClient<'_>, oid: pg_sys::Oid) -> WfResult<Source> {
    let rel = with_inspect_plans(client, |p| {
        or_internal!(
            client.select(&p.source, Some(1), &[oid.into()]),
            "inspect source"
        )
    });
    if rel.is_empty() {
        return Err(WfError::SourceNotFound { oid: oid.to_u32() });
    }
    let row = rel.first();
    let name: String = or_internal!(row.get(1), "source name")
        .unwrap_or_else(|| internal!("source without a name"));
    let kind: String = or_internal!(row.get(2), "source kind")
        .unwrap_or_else(|| internal!("source without a relkind"));
    // No columns at all (a table with every column dropped) reads as NULL.
    let columns: Vec<String> = or_internal!(row.get(3), "source columns").unwrap_or_default();
    if !["r", "p", "v", "m", "f"].contains(&kind.as_str()) {
        return Err(WfError::SourceNotATable { source: name });
    }
    let has = |c: &str| columns.iter().any(|x| x == c);
    let missing: Vec<&'static str> = ["id", "run_id", "type", "correlation_id"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if !missing.is_empty() {
        return Err(WfError::SourceMissingColumns {
            source: name,
            missing,
        });
    }
    // The types of the columns read, before any is read: they decide which
    // casts and operators the audit's queries call (src/log_shape.rs).
    crate::log_shape::check_relation(oid, &name, crate::log_shape::Use::Source)?;
    let has_jsonb_payload: bool = or_internal!(row.get(4), "source payload").unwrap_or(false);
    let run_id_not_null: bool = or_internal!(row.get(5), "source run_id").unwrap_or(false);
    let enum_labels = (name == "workflow_ext.events").then(|| {
        with_inspect_plans(client, |p| {
            or_internal!(client.select(&p.labels, None, &[]), "event type labels")
        })
        .map(|r| {
            let oid: Option<pg_sys::Oid> = r.get(1).ok().flatten();
            let label: Option<String> = r.get(2).ok().flatten();
            (
                oid.unwrap_or_else(|| internal!("enum label without oid")),
                label.unwrap_or_default(),
            )
        })
        .collect()
    });
    Ok(Source {
        enum_labels,
        has_seq: has("seq"),
        has_created_at: has("created_at"),
        run_id_not_null,
        has_jsonb_payload,
        name,
    })
}

/// One anomaly row of `replay`.
type Row = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

/// A text datum as &str without copying it: short, uncompressed values (all
/// of an event's ids and types) are read where they lie; anything toasted
/// goes through PostgreSQL's detoaster (into the current memory context). Invalid UTF-8 reads as absent.
///
/// # Safety
/// `d` must be a non-null text/varchar datum that outlives `'a`.
unsafe fn text<'a>(d: pg_sys::Datum) -> Option<&'a str> {
    unsafe {
        let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(p) || pgrx::varlena::varatt_is_4b_c(p) {
            p = pg_sys::pg_detoast_datum_packed(p);
        }
        let len = pgrx::varlena::varsize_any_exhdr(p);
        let bytes = std::slice::from_raw_parts(pgrx::varlena::vardata_any(p) as *const u8, len);
        std::str::from_utf8(bytes).ok()
    }
}

/// Streams `query` (columns, in this order: seq, type, correlation_id, id,
/// run_id, hook token; ordered by run, then replay order) through one
/// auditor per run.
/// `emit` gets every finding; `on_run_end` the run id and its event count;
/// `on_token` every hook token taken or tried.
/// NULL and '' run ids are different runs (and both invalid).
///
/// Rows are deformed with one call each and their text read in place: going
/// through pgrx's per-value accessors (a guarded FFI call per value) cost as
/// much as the rest of the replay together.
#[allow(
    clippy::too_many_arguments,
    reason = "the query and its arguments, the source, the direct-read choice and three callbacks: \
              a struct around them would only rename them"
)]
fn stream(
    client: &SpiClient<'_>,
    query: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    src: &Source,
    direct: Option<Option<&str>>,
    on_run_end: impl FnMut(Option<&str>, i64),
    on_token: impl FnMut(&str),
    emit: impl FnMut(&StoredEvent<'_>, Finding),
) {
    let mut feed = Feeder {
        src,
        auditor: Auditor::new(),
        current: None,
        position: 0,
        on_run_end,
        on_token,
        emit,
    };
    let mut values = [pg_sys::Datum::from(0usize); 6];
    let mut nulls = [true; 6];
    let mut scratch = PgMemoryContexts::new("workflow_ext audit batch");
    // The own log, read straight from its primary key (src/log_scan.rs).
    let scan = match (direct, &src.enum_labels) {
        // SAFETY: in the function's transaction, with its snapshot.
        (Some(run), Some(labels)) => unsafe { OwnLogScan::open(run) }.map(|scan| {
            let hook = labels
                .iter()
                .find(|(_, l)| l == EventType::HookCreated.as_str())
                .map_or(pg_sys::InvalidOid, |(o, _)| *o);
            scan.with_hook_created(hook)
        }),
        _ => None,
    };
    if let Some(mut scan) = scan {
        let mut more = true;
        while more {
            // SAFETY: the values read in a batch live in the scan's buffer or
            // in the scratch context, reset only after the batch.
            unsafe {
                scratch.switch_to(|_| {
                    for _ in 0..BATCH {
                        // A log can be long: let a cancel or
                        // statement_timeout end the audit.
                        check_for_interrupts!();
                        if !scan.next(&mut values, &mut nulls) {
                            more = false;
                            break;
                        }
                        feed.row(&values, &nulls);
                    }
                });
                scratch.reset();
            }
        }
        scan.finish();
        feed.finish();
        return;
    }
    let mut cursor = or_internal!(client.try_open_cursor(query, args), "open replay cursor");
    loop {
        // SAFETY: SPI_tuptable is the table the fetch just filled; every
        // datum read below lives in it until it is freed at the end of this
        // iteration.
        let table = {
            let batch = or_internal!(cursor.fetch(BATCH), "fetch replay rows");
            if batch.is_empty() {
                break;
            }
            unsafe { pg_sys::SPI_tuptable }
        };
        let (tuples, desc) = unsafe {
            (
                std::slice::from_raw_parts((*table).vals, (*table).numvals as usize),
                (*table).tupdesc,
            )
        };
        // Detoasted copies (rare: ids and types are short) go to a scratch
        // context reset with each batch.
        // SAFETY: the closure only reads the batch and writes Rust memory.
        unsafe {
            scratch.switch_to(|_| {
                for &tuple in tuples {
                    check_for_interrupts!();
                    pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                    feed.row(&values, &nulls);
                }
            });
            scratch.reset();
        }
        // pgrx's tuple table has no Drop: free it here, or every batch stays
        // allocated until the function returns.
        // SAFETY: nothing refers to the table any more.
        unsafe {
            pg_sys::SPI_freetuptable(table);
            pg_sys::SPI_tuptable = std::ptr::null_mut();
        }
    }
    feed.finish();
}

/// What `stream` does with each row: one auditor per run, reset between
/// runs.
struct Feeder<'s, R, T, E> {
    src: &'s Source,
    auditor: Auditor,
    /// The run being audited: None before the first row; Some(None) for the
    /// rows whose run_id is NULL.
    current: Option<Option<String>>,
    position: i64,
    on_run_end: R,
    on_token: T,
    emit: E,
}

impl<R, T, E> Feeder<'_, R, T, E>
where
    R: FnMut(Option<&str>, i64),
    T: FnMut(&str),
    E: FnMut(&StoredEvent<'_>, Finding),
{
    /// # Safety
    /// `values` (seq, type, correlation_id, id, run_id, token) are valid
    /// datums where `nulls` is false, of the types `columns` selects (type:
    /// the enum's OID for the own log).
    unsafe fn row(&mut self, values: &[pg_sys::Datum; 6], nulls: &[bool; 6]) {
        let txt = |i: usize| {
            if nulls[i] {
                None
            } else {
                unsafe { text(values[i]) }
            }
        };
        let type_name = match (nulls[1], &self.src.enum_labels) {
            (true, _) => None,
            (false, Some(labels)) => {
                let oid = pg_sys::Oid::from(values[1].value() as u32);
                labels
                    .iter()
                    .find(|(o, _)| *o == oid)
                    .map(|(_, l)| l.as_str())
            }
            (false, None) => txt(1),
        };
        let mut event = StoredEvent {
            position: 0,
            seq: match (self.src.has_seq, nulls[0]) {
                (false, _) => Seq::NotStored,
                (true, true) => Seq::Null,
                (true, false) => Seq::Value(values[0].value() as i64),
            },
            type_name,
            correlation_id: txt(2),
            id: txt(3),
            run_id: txt(4),
            token: txt(5),
        };
        if self.current.as_ref().map(Option::as_deref) != Some(event.run_id) {
            if let Some(done) = self.current.take() {
                (self.on_run_end)(done.as_deref(), self.position);
            }
            self.auditor.reset();
            self.position = 0;
            self.current = Some(event.run_id.map(str::to_string));
        }
        self.position = self.position.saturating_add(1);
        event.position = self.position;
        if let Some(token) = event.token {
            (self.on_token)(token);
        }
        for f in self.auditor.feed(&event) {
            (self.emit)(&event, f);
        }
    }

    fn finish(mut self) {
        if let Some(done) = self.current.take() {
            (self.on_run_end)(done.as_deref(), self.position);
        }
    }
}

fn order_by(src: &Source) -> &'static str {
    // The extension's order (seq) when there is one, else the DevKit's own
    // replay order: by id (ULIDs sort by bytes). Our own table's seq is
    // unique per run, so it needs no tie-breaker (and no sort on top of the
    // primary key's order).
    if src.name == "workflow_ext.events" {
        "seq"
    } else if src.has_seq {
        "seq, id::text COLLATE \"C\""
    } else {
        "id::text COLLATE \"C\""
    }
}

/// The select list `stream` reads.
fn columns(src: &Source) -> String {
    format!(
        "{}, {}, correlation_id::text, id::text, run_id::text, {}",
        seq_column(src),
        if src.enum_labels.is_some() {
            "type"
        } else {
            "type::text"
        },
        token_column(src)
    )
}

/// A hook_created's token, as the writer reads it (events_track_hook_tokens).
fn token_column(src: &Source) -> &'static str {
    if src.enum_labels.is_some() {
        "CASE WHEN type = 'hook_created'::workflow_ext.event_type \
              AND pg_catalog.jsonb_typeof(payload OPERATOR(pg_catalog.->) 'token') = 'string' \
         THEN payload OPERATOR(pg_catalog.->>) 'token' END"
    } else if src.has_jsonb_payload {
        "CASE WHEN type::text = 'hook_created' \
              AND pg_catalog.jsonb_typeof(payload OPERATOR(pg_catalog.->) 'token') = 'string' \
         THEN payload OPERATOR(pg_catalog.->>) 'token' END"
    } else {
        "NULL::text"
    }
}

/// A token conflict between runs, found in the log: the `at` (seq, or
/// position), id and correlation id of a hook_created whose token an active
/// hook of another run held when it was created.
struct CrossRunConflict {
    run_id: String,
    at: i64,
    id: Option<String>,
    correlation_id: Option<String>,
    detail: String,
}

/// The auditor sees one run at a time; a token held across runs is found
/// here. Every hook_created with a token is replayed in created_at order
/// (then run id, then position) under the writer's rule: it takes its token
/// unless an active hook holds it (released by that hook's hook_disposed or
/// its run's terminal event); a refused one takes nothing, as the writer
/// would not have stored it. Conflicts within one run are the auditor's;
/// those across runs are returned here. Only for sources with a jsonb
/// payload and created_at. `only`: report only that run's hooks, whose
/// tokens are given (so only hooks with those tokens are read: the partial
/// index events_hook_token serves it on the extension's own table).
fn cross_run_token_conflicts(
    client: &SpiClient<'_>,
    src: &Source,
    only: Option<(&str, &[String])>,
) -> Vec<CrossRunConflict> {
    if !src.has_jsonb_payload || !src.has_created_at || only.is_some_and(|(_, t)| t.is_empty()) {
        return Vec::new();
    }
    let run_id = only.map(|(r, _)| r);
    let tokens: Option<Vec<String>> = only.map(|(_, t)| t.to_vec());
    let at = if src.has_seq {
        "c.seq::bigint".to_string()
    } else {
        format!(
            "(SELECT pg_catalog.count(*) FROM {} x WHERE x.run_id = c.run_id \
               AND x.id::text COLLATE \"C\" <= c.id::text COLLATE \"C\")",
            src.name
        )
    };
    let micros = |col: &str| format!("(pg_catalog.date_part('epoch', {col}) * 1000000)::bigint");
    let query = format!(
        "SELECT c.run_id::text, {at}, c.id::text, c.correlation_id::text, c.payload OPERATOR(pg_catalog.->>) 'token', \
                {created}, \
                (SELECT {released} FROM {src} e WHERE e.run_id = c.run_id \
                   AND ((e.type::text = 'hook_disposed' AND e.correlation_id = c.correlation_id) \
                        OR e.type::text IN ('run_completed', 'run_failed', 'run_cancelled'))) \
           FROM {src} c \
          WHERE c.type = 'hook_created' AND c.run_id IS NOT NULL AND c.correlation_id IS NOT NULL \
            AND pg_catalog.jsonb_typeof(c.payload OPERATOR(pg_catalog.->) 'token') = 'string' \
            AND ($1::text[] IS NULL OR c.payload OPERATOR(pg_catalog.->>) 'token' = ANY($1)) \
          ORDER BY c.created_at, c.run_id, 2",
        src = src.name,
        created = micros("c.created_at"),
        released = micros("pg_catalog.min(e.created_at)"),
    );
    let rows = or_internal!(
        client.select(query.as_str(), None, &[tokens.into()]),
        "token hooks"
    );
    // token → (run, hook, released at)
    let mut held: HashMap<String, (String, String, Option<i64>)> = HashMap::new();
    let mut found = Vec::new();
    for row in rows {
        check_for_interrupts!();
        let get_text = |n: usize| -> String {
            // Selected only where run_id, correlation_id and the token are set.
            or_internal!(row.get::<String>(n), "token hook")
                .unwrap_or_else(|| internal!("token hook column {n} is NULL"))
        };
        let (run, hook, token) = (get_text(1), get_text(4), get_text(5));
        let created: Option<i64> = or_internal!(row.get(6), "token hook time");
        let released: Option<i64> = or_internal!(row.get(7), "token release time");
        let holder_active = held
            .get(&token)
            .is_some_and(|(_, _, until)| match (until, created) {
                (None, _) | (_, None) => true,
                (Some(until), Some(at)) => *until > at,
            });
        if !holder_active {
            held.insert(token, (run, hook, released));
            continue;
        }
        let (holder_run, holder_hook, _) = &held[&token];
        if *holder_run != run && run_id.is_none_or(|r| r == run) {
            found.push(CrossRunConflict {
                detail: format!(
                    "token \"{token}\" was held by active hook \"{holder_hook}\" of run \"{holder_run}\"; \
                     hook \"{hook}\" cannot take it"
                ),
                // A hook row whose seq is NULL (the stream reports it as
                // invalid_event) has no position to name: 0.
                at: or_internal!(row.get(2), "token hook position").unwrap_or(0),
                id: or_internal!(row.get(3), "token hook id"),
                correlation_id: Some(hook),
                run_id: run,
            });
        }
    }
    found
}

fn seq_column(src: &Source) -> &'static str {
    if src.has_seq {
        "seq::bigint"
    } else {
        "NULL::bigint"
    }
}

/// Replays one run's log and returns one row per anomaly; a clean run
/// returns no rows.
#[allow(
    clippy::type_complexity,
    reason = "pgrx spells a set-returning function's columns as a tuple of name! types"
)]
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn replay(
    run_id: Option<&str>,
    source: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(seq, i64),
        name!(event_id, Option<String>),
        name!(event_type, Option<String>),
        name!(correlation_id, Option<String>),
        name!(anomaly, String),
        name!(detail, String),
    ),
> {
    let run_id = or_raise!(validate::ident("run_id", run_id));
    let Some(source) = source else {
        raise!(WfError::NullArgument { arg: "source" })
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    Spi::connect(|client| {
        let src = or_raise!(inspect(client, source));
        let query = format!(
            "SELECT {} FROM {} WHERE run_id = $1 ORDER BY {}",
            columns(&src),
            src.name,
            order_by(&src)
        );
        stream(
            client,
            &query,
            &[run_id.into()],
            &src,
            Some(Some(run_id)),
            |_, _| {},
            |t| tokens.push(t.to_string()),
            |e, f| {
                let own = |s: Option<&str>| s.map(str::to_string);
                rows.push((
                    e.at(),
                    own(e.id),
                    own(e.type_name),
                    own(e.correlation_id),
                    f.anomaly.to_string(),
                    f.detail,
                ));
            },
        );
        for c in cross_run_token_conflicts(client, &src, Some((run_id, tokens.as_slice()))) {
            let hook_created = Some(EventType::HookCreated.to_string());
            rows.push((
                c.at,
                c.id,
                hook_created,
                c.correlation_id,
                TOKEN_CONFLICT.into(),
                c.detail,
            ));
        }
    });
    // Cross-run findings join the stream's, in log order (stable: a row's own
    // findings keep their order).
    rows.sort_by_key(|r| r.0);
    TableIterator::new(rows)
}

/// The number of events of one run of a source.
fn run_events(client: &SpiClient<'_>, src: &Source, run_id: &str) -> i64 {
    let query = format!(
        "SELECT pg_catalog.count(*) FROM {} WHERE run_id = $1",
        src.name
    );
    or_internal!(
        client.select(query.as_str(), Some(1), &[run_id.into()]),
        "count run events"
    )
    .first()
    .get::<i64>(1)
    .ok()
    .flatten()
    .unwrap_or_else(|| internal!("count(*) of run events is NULL"))
}

/// What `scan` keeps of a run while streaming it: the anomaly count and the
/// first finding.
struct FirstFinding {
    anomalies: i64,
    at: i64,
    anomaly: &'static str,
    detail: String,
}

/// Audits every run of a source (or only runs with events since `since`)
/// and returns one row per run that has anomalies: for monitoring.
#[allow(
    clippy::type_complexity,
    reason = "pgrx spells a set-returning function's columns as a tuple of name! types"
)]
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn scan(
    source: Option<pg_sys::Oid>,
    since: Option<TimestampWithTimeZone>,
) -> TableIterator<
    'static,
    (
        name!(run_id, Option<String>),
        name!(events, i64),
        name!(anomalies, i64),
        name!(first_seq, i64),
        name!(first_anomaly, String),
        name!(first_detail, String),
    ),
> {
    let Some(source) = source else {
        raise!(WfError::NullArgument { arg: "source" })
    };
    let mut out: Vec<(Option<String>, i64, i64, i64, String, String)> = Vec::new();
    Spi::connect(|client| {
        let src = or_raise!(inspect(client, source));
        if since.is_some() && !src.has_created_at {
            raise!(WfError::SourceMissingColumns {
                source: src.name.clone(),
                missing: vec!["created_at"]
            });
        }
        let filter = if since.is_some() {
            format!(
                "WHERE run_id IN (SELECT run_id FROM {} WHERE created_at >= $1)",
                src.name
            )
        } else {
            String::new()
        };
        let mut queries = vec![format!(
            "SELECT {} FROM {} {filter} ORDER BY run_id, {}",
            columns(&src),
            src.name,
            order_by(&src)
        )];
        // `IN` never matches a NULL run_id: the NULL run, when one of its
        // rows is recent, is read by a query of its own, last, where
        // ORDER BY run_id puts it without `since`. Kept out of the first
        // query so that one keeps its plan; a source whose run_id is NOT
        // NULL (ours, the DevKit's) does not run it.
        if since.is_some() && !src.run_id_not_null {
            queries.push(format!(
                "SELECT {} FROM {src} WHERE run_id IS NULL \
                    AND EXISTS (SELECT 1 FROM {src} WHERE run_id IS NULL AND created_at >= $1) \
                  ORDER BY {}",
                columns(&src),
                order_by(&src),
                src = src.name,
            ));
        }
        let args: Vec<pgrx::datum::DatumWithOid<'_>> = since.into_iter().map(Into::into).collect();
        let pending: RefCell<Option<FirstFinding>> = RefCell::new(None);
        let mut audited: HashSet<String> = HashSet::new();
        for query in &queries {
            stream(
                client,
                query,
                &args,
                &src,
                since.is_none().then_some(None),
                |run, events| {
                    if since.is_some() {
                        audited.extend(run.map(str::to_string));
                    }
                    if let Some(p) = pending.take() {
                        out.push((
                            run.map(str::to_string),
                            events,
                            p.anomalies,
                            p.at,
                            p.anomaly.to_string(),
                            p.detail,
                        ));
                    }
                },
                |_| {},
                |e, f| {
                    let mut p = pending.borrow_mut();
                    match p.as_mut() {
                        Some(p) => p.anomalies = p.anomalies.saturating_add(1),
                        None => {
                            *p = Some(FirstFinding {
                                anomalies: 1,
                                at: e.at(),
                                anomaly: f.anomaly,
                                detail: f.detail,
                            })
                        }
                    }
                },
            );
        }
        // Runs whose hooks took a token another run held: add to their row
        // (or give them one). With `since`, only runs the stream audited.
        for c in cross_run_token_conflicts(client, &src, None) {
            match out
                .iter_mut()
                .find(|r| r.0.as_deref() == Some(c.run_id.as_str()))
            {
                Some(r) => {
                    r.2 = r.2.saturating_add(1);
                    if c.at < r.3 {
                        (r.3, r.4, r.5) = (c.at, TOKEN_CONFLICT.into(), c.detail);
                    }
                }
                None if since.is_some() && !audited.contains(&c.run_id) => {}
                None => {
                    let events = run_events(client, &src, &c.run_id);
                    out.push((
                        Some(c.run_id),
                        events,
                        1,
                        c.at,
                        TOKEN_CONFLICT.into(),
                        c.detail,
                    ));
                }
            }
        }
    });
    TableIterator::new(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::audit::RUN_CREATED_NOT_FIRST;
    use crate::lifecycle::{CorrelationRule, EventType};
    use crate::subxact::in_subtransaction;
    use crate::testing::{writer_code, Rng};
    use pgrx::prelude::*;

    /// Property: replay and scan read the own log straight from its primary
    /// key (src/log_scan.rs), every other source through SPI. Random rows,
    /// anomalies included (written with the validator disabled, as a
    /// data-only restore would), audited in the own log and in a plain copy
    /// of it, must give the same findings row for row.
    #[pg_test]
    fn direct_read_of_the_own_log_equals_the_spi_read() {
        Spi::run(
            "ALTER TABLE workflow_ext.events DISABLE TRIGGER events_validate_insert; \
             ALTER TABLE workflow_ext.events DISABLE TRIGGER events_hook_tokens",
        )
        .unwrap();
        let mut rng = Rng(0x0BAD_5EED_1234_4321);
        let mut rand = |n| rng.below(n);
        let corrs = ["s1", "s2", "w1", "h1", "h2"];
        for run_no in 0..60 {
            let run = format!("direct-{run_no}");
            let mut seq = 0i64;
            for pos in 0..(5 + rand(80)) {
                // Mostly dense, with gaps now and then.
                seq += 1 + i64::from(rand(12) == 0) * 2;
                let t = if pos == 0 {
                    EventType::RunCreated
                } else {
                    EventType::ALL[rand(EventType::ALL.len())]
                };
                let corr = match t.correlation_rule() {
                    CorrelationRule::Required | CorrelationRule::Optional if rand(8) > 0 => {
                        Some(corrs[rand(corrs.len())])
                    }
                    _ => None,
                };
                let payload = (t == EventType::HookCreated)
                    .then(|| format!("{{\"token\": \"tok-{}\"}}", rand(30)));
                Spi::run_with_args(
                    // The creation index still holds: a second creation of
                    // an entity is skipped (a gap in the seqs).
                    "INSERT INTO workflow_ext.events (id, run_id, seq, type, correlation_id, payload) \
                     VALUES ($1, $2, $3, $4::workflow_ext.event_type, $5, $6::jsonb) ON CONFLICT DO NOTHING",
                    &[
                        format!("wevt_d{run_no:03}_{pos:04}").into(),
                        run.as_str().into(),
                        seq.into(),
                        t.as_str().into(),
                        corr.into(),
                        payload.as_deref().into(),
                    ],
                )
                .unwrap();
            }
        }
        Spi::run("CREATE TABLE events_copy AS SELECT * FROM workflow_ext.events").unwrap();
        let rows = |q: &str| -> String {
            Spi::get_one::<String>(&format!(
                "SELECT coalesce(string_agg(r::text, E'\\n'), '') FROM ({q}) r"
            ))
            .unwrap()
            .unwrap_or_default()
        };
        let mut findings = String::new();
        for run_no in 0..60 {
            let run = format!("direct-{run_no}");
            let direct = rows(&format!("SELECT * FROM workflow_ext.replay('{run}')"));
            let through_spi = rows(&format!(
                "SELECT * FROM workflow_ext.replay('{run}', 'events_copy')"
            ));
            assert_eq!(direct, through_spi, "replay of {run}");
            findings.push_str(&direct);
            findings.push('\n');
        }
        let direct = rows("SELECT * FROM workflow_ext.scan() ORDER BY run_id");
        let through_spi = rows("SELECT * FROM workflow_ext.scan('events_copy') ORDER BY run_id");
        assert_eq!(direct, through_spi, "scan");
        // The histories are anomalous enough to mean something, token
        // conflicts across runs included.
        let n = findings.lines().filter(|l| !l.is_empty()).count();
        assert!(n > 200, "{n} findings");
        assert!(
            findings.contains("token_conflict"),
            "no token conflict in\n{findings}"
        );
    }

    /// Property: feed random event sequences (legal and not) to append_event
    /// and, verbatim, into a DevKit-shaped table that checks nothing. The
    /// audit of the DevKit table must name exactly the events the writer
    /// refused, with the writer's code, at their positions; the writer's own
    /// log must replay clean.
    #[pg_test]
    fn writer_and_auditor_agree_on_random_sequences() {
        Spi::run(
            "CREATE TABLE devkit_events (id varchar PRIMARY KEY, type varchar NOT NULL, \
             correlation_id varchar, created_at timestamp DEFAULT now(), run_id varchar NOT NULL, payload jsonb)",
        )
        .unwrap();
        let corrs = ["s1", "s2", "w1", "h1"];
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let mut rand = |n| rng.below(n);
        let mut refused_total = 0;
        let mut token_conflicts = 0;
        for run_no in 0..80 {
            let run = format!("prop-{run_no}");
            let mut expected: Vec<(i64, String)> = Vec::new();
            for pos in 1..=60i64 {
                // Extra hook creations, so tokens are contended.
                let t = if pos == 1 && rand(10) > 0 {
                    EventType::RunCreated
                } else if rand(6) == 0 {
                    EventType::HookCreated
                } else {
                    EventType::ALL[rand(EventType::ALL.len())]
                };
                let corr = match (t.correlation_rule(), rand(20)) {
                    (CorrelationRule::Required, 0) => None, // a malformed event now and then
                    (CorrelationRule::Required, _) => Some(corrs[rand(corrs.len())]),
                    // Keyed attr_set (an attribute, set once) and noop with
                    // and without one.
                    (CorrelationRule::Optional, n) if n < 10 => Some("a1"),
                    _ => None,
                };
                // Hooks of a run draw their token from two per run, so some
                // creations find it held by another active hook.
                let payload = (t == EventType::HookCreated && rand(3) > 0)
                    .then(|| format!("{{\"token\": \"{run}-t{}\"}}", rand(2)));
                Spi::run_with_args(
                    "INSERT INTO devkit_events (id, type, correlation_id, run_id, payload) VALUES ($1, $2, $3, $4, $5::jsonb)",
                    &[
                        format!("wevt_{run_no:03}_{pos:04}").into(),
                        t.as_str().into(),
                        corr.into(),
                        run.as_str().into(),
                        payload.as_deref().into(),
                    ],
                )
                .unwrap();
                let run_ref = run.as_str();
                let payload_ref = payload.as_deref();
                let outcome = in_subtransaction(move || {
                    Spi::run_with_args(
                        "SELECT workflow_ext.append_event($1, $2, $3, $4::jsonb)",
                        &[
                            run_ref.into(),
                            corr.into(),
                            t.as_str().into(),
                            payload_ref.into(),
                        ],
                    )
                    .unwrap();
                });
                match outcome {
                    Err(e) => expected.push((pos, writer_code(&e))),
                    // Accepted, but refused events came before it.
                    Ok(()) if t == EventType::RunCreated && pos > 1 => {
                        expected.push((pos, RUN_CREATED_NOT_FIRST.to_string()))
                    }
                    Ok(()) => {}
                }
            }
            refused_total += expected.len();
            token_conflicts += expected
                .iter()
                .filter(|(_, c)| c == "token_conflict")
                .count();
            let got: Vec<(i64, String)> = Spi::connect(|c| {
                c.select(
                    "SELECT seq, anomaly FROM workflow_ext.replay($1, 'devkit_events') ORDER BY seq",
                    None,
                    &[run.as_str().into()],
                )
                .unwrap()
                .map(|r| (r.get::<i64>(1).unwrap().unwrap(), r.get::<String>(2).unwrap().unwrap()))
                .collect()
            });
            assert_eq!(got, expected, "run {run}");
            let own = Spi::get_one_with_args::<i64>(
                "SELECT count(*) FROM workflow_ext.replay($1)",
                &[run.as_str().into()],
            );
            assert_eq!(
                own,
                Ok(Some(0)),
                "the writer's own log of {run} must replay clean"
            );
        }
        assert!(
            refused_total > 400,
            "too few refusals to mean anything: {refused_total}"
        );
        assert!(
            token_conflicts >= 5,
            "too few token conflicts to mean anything: {token_conflicts}"
        );
    }
}
