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

use crate::append::internal;
use crate::audit::{Auditor, Finding};
use crate::errors::{OrRaise, WfError, WfResult};
use crate::validate;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::RefCell;

/// Rows fetched from the cursor at a time: memory stays flat however long
/// the run is.
const BATCH: i64 = 1_000;

struct Source {
    /// Quoted, qualified name, from regclass output.
    name: String,
    has_seq: bool,
    has_created_at: bool,
}

fn inspect(client: &SpiClient<'_>, oid: pg_sys::Oid) -> WfResult<Source> {
    let rel = client
        .select(
            "SELECT c.oid::pg_catalog.regclass::text, c.relkind::text, \
                    pg_catalog.array_agg(a.attname::text) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped) \
             FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid = $1 GROUP BY c.oid, c.relkind",
            Some(1),
            &[oid.into()],
        )
        .unwrap_or_else(|e| internal(&format!("inspect source: {e}")));
    if rel.is_empty() {
        return Err(WfError::SourceNotFound { oid: oid.to_u32() });
    }
    let row = rel.first();
    let name: String = row.get(1).ok().flatten().unwrap_or_default();
    let kind: String = row.get(2).ok().flatten().unwrap_or_default();
    let columns: Vec<String> = row.get(3).ok().flatten().unwrap_or_default();
    if !["r", "p", "v", "m", "f"].contains(&kind.as_str()) {
        return Err(WfError::SourceNotATable { source: name });
    }
    let has = |c: &str| columns.iter().any(|x| x == c);
    let missing: Vec<&'static str> =
        ["id", "run_id", "type", "correlation_id"].into_iter().filter(|c| !has(c)).collect();
    if !missing.is_empty() {
        return Err(WfError::SourceMissingColumns { source: name, missing });
    }
    Ok(Source { has_seq: has("seq"), has_created_at: has("created_at"), name })
}

/// One anomaly row of `replay`.
type Row = (i64, Option<String>, Option<String>, Option<String>, String, String);

/// The columns of one fetched row, read in place from the SPI tuple table.
struct RowView<'a> {
    seq: Option<i64>,
    event_type: Option<&'a str>,
    correlation_id: Option<&'a str>,
    id: Option<&'a str>,
    run_id: Option<&'a str>,
}

/// A text datum as &str without copying it: short, uncompressed values (all
/// of an event's ids and types) are read where they lie; anything toasted
/// goes through PostgreSQL's detoaster. Invalid UTF-8 reads as absent.
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
/// run_id) through one auditor per run, calling `emit` for every finding.
///
/// Rows are deformed with one call each and their text read in place: going
/// through pgrx's per-value accessors (a guarded FFI call per value) cost as
/// much as the rest of the replay together.
fn stream(
    client: &SpiClient<'_>,
    query: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    has_seq: bool,
    mut on_run_end: impl FnMut(&str, i64),
    mut emit: impl FnMut(&str, i64, Option<&str>, Option<&str>, Option<&str>, Finding),
) {
    let mut cursor = client
        .try_open_cursor(query, args)
        .unwrap_or_else(|e| internal(&format!("open replay cursor: {e}")));
    let mut auditor = Auditor::new();
    let mut current: Option<String> = None;
    let mut position = 0i64;
    let mut values = [pg_sys::Datum::from(0usize); 5];
    let mut nulls = [true; 5];
    loop {
        let batch = cursor
            .fetch(BATCH)
            .unwrap_or_else(|e| internal(&format!("fetch replay rows: {e}")));
        if batch.is_empty() {
            break;
        }
        // SAFETY: `batch` owns SPI_tuptable until it is dropped at the end
        // of this iteration; every datum read below lives in it.
        let (tuples, desc) = unsafe {
            let tt = pg_sys::SPI_tuptable;
            (std::slice::from_raw_parts((*tt).vals, (*tt).numvals as usize), (*tt).tupdesc)
        };
        for &tuple in tuples {
            let row = unsafe {
                pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                let txt = |i: usize| if nulls[i] { None } else { text(values[i]) };
                RowView {
                    seq: (!nulls[0]).then(|| values[0].value() as i64),
                    event_type: txt(1),
                    correlation_id: txt(2),
                    id: txt(3),
                    run_id: txt(4),
                }
            };
            let run = row.run_id.unwrap_or_default();
            if current.as_deref() != Some(run) {
                if let Some(done) = current.take() {
                    on_run_end(&done, position);
                }
                auditor = Auditor::new();
                position = 0;
                current = Some(run.to_string());
            }
            position += 1;
            let seq = if has_seq { row.seq } else { None };
            let at = seq.unwrap_or(position);
            for f in auditor.feed(at, seq, row.event_type.unwrap_or(""), row.correlation_id) {
                emit(run, at, row.id, row.event_type, row.correlation_id, f);
            }
        }
        drop(batch);
    }
    if let Some(done) = current {
        on_run_end(&done, position);
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

fn seq_column(src: &Source) -> &'static str {
    if src.has_seq {
        "seq::bigint"
    } else {
        "NULL::bigint"
    }
}

/// Replays one run's log and returns one row per anomaly; a clean run
/// returns no rows.
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
    let run_id = validate::ident("run_id", run_id).or_raise();
    let source = source.ok_or(WfError::NullArgument { arg: "source" }).or_raise();
    let mut rows: Vec<Row> = Vec::new();
    Spi::connect(|client| {
        let src = inspect(client, source).or_raise();
        let query = format!(
            "SELECT {}, type::text, correlation_id::text, id::text, run_id::text FROM {} \
             WHERE run_id = $1 ORDER BY {}",
            seq_column(&src),
            src.name,
            order_by(&src)
        );
        stream(client, &query, &[run_id.into()], src.has_seq, |_, _| {}, |_, at, id, ty, corr, f| {
            let own = |s: Option<&str>| s.map(str::to_string);
            rows.push((at, own(id), own(ty), own(corr), f.anomaly.to_string(), f.detail));
        });
    });
    TableIterator::new(rows)
}

/// Audits every run of a source (or only runs with events since `since`)
/// and returns one row per run that has anomalies: for monitoring.
#[pg_extern(sql = false)] // declared in sql/functions.sql
fn scan(
    source: Option<pg_sys::Oid>,
    since: Option<TimestampWithTimeZone>,
) -> TableIterator<
    'static,
    (
        name!(run_id, String),
        name!(events, i64),
        name!(anomalies, i64),
        name!(first_seq, i64),
        name!(first_anomaly, String),
        name!(first_detail, String),
    ),
> {
    let source = source.ok_or(WfError::NullArgument { arg: "source" }).or_raise();
    let mut out: Vec<(String, i64, i64, i64, String, String)> = Vec::new();
    Spi::connect(|client| {
        let src = inspect(client, source).or_raise();
        if since.is_some() && !src.has_created_at {
            WfError::SourceMissingColumns { source: src.name.clone(), missing: vec!["created_at"] }.raise();
        }
        let filter = if since.is_some() {
            format!("WHERE run_id IN (SELECT run_id FROM {} WHERE created_at >= $1)", src.name)
        } else {
            String::new()
        };
        let query = format!(
            "SELECT {}, type::text, correlation_id::text, id::text, run_id::text FROM {} {filter} \
             ORDER BY run_id, {}",
            seq_column(&src),
            src.name,
            order_by(&src)
        );
        let args: Vec<pgrx::datum::DatumWithOid<'_>> = since.into_iter().map(Into::into).collect();
        // Per run: (count, first finding); flushed when the run ends.
        let pending: RefCell<Option<(i64, i64, String, String)>> = RefCell::new(None);
        stream(
            client,
            &query,
            &args,
            src.has_seq,
            |run, events| {
                if let Some((n, seq, code, detail)) = pending.take() {
                    out.push((run.to_string(), events, n, seq, code, detail));
                }
            },
            |_, at, _, _, _, f| {
                let mut p = pending.borrow_mut();
                match p.as_mut() {
                    Some(p) => p.0 += 1,
                    None => *p = Some((1, at, f.anomaly.to_string(), f.detail)),
                }
            },
        );
    });
    TableIterator::new(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::audit::RUN_CREATED_NOT_FIRST;
    use crate::lifecycle::{CorrelationRule, EventType};
    use crate::subxact::in_subtransaction;
    use pgrx::pg_sys::panic::CaughtError;
    use pgrx::prelude::*;

    /// The code the writer gave for a refusal: 23505 is the index's own
    /// duplicate error; argument errors are what the audit calls invalid.
    fn writer_code(e: &CaughtError) -> String {
        let r = match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        match r.sql_error_code() {
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION => "duplicate_creation".into(),
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED
            | PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE => "invalid_event".into(),
            _ => r
                .detail()
                .and_then(|d| d.strip_prefix("anomaly: "))
                .and_then(|d| d.split(';').next())
                .unwrap_or("?")
                .to_string(),
        }
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
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut rand = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut refused_total = 0;
        for run_no in 0..40 {
            let run = format!("prop-{run_no}");
            let mut expected: Vec<(i64, String)> = Vec::new();
            for pos in 1..=60i64 {
                let t = if pos == 1 && rand(10) > 0 { EventType::RunCreated } else { EventType::ALL[rand(17)] };
                let corr = match (t.correlation_rule(), rand(20)) {
                    (CorrelationRule::Required, 0) => None, // a malformed event now and then
                    (CorrelationRule::Required, _) => Some(corrs[rand(corrs.len())]),
                    _ => None,
                };
                Spi::run_with_args(
                    "INSERT INTO devkit_events (id, type, correlation_id, run_id) VALUES ($1, $2, $3, $4)",
                    &[format!("wevt_{run_no:03}_{pos:04}").into(), t.as_str().into(), corr.into(), run.as_str().into()],
                )
                .unwrap();
                let run_ref = run.as_str();
                let outcome = in_subtransaction(move || {
                    Spi::run_with_args(
                        "SELECT workflow_ext.append_event($1, $2, $3)",
                        &[run_ref.into(), corr.into(), t.as_str().into()],
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
            assert_eq!(own, Ok(Some(0)), "the writer's own log of {run} must replay clean");
        }
        assert!(refused_total > 400, "too few refusals to mean anything: {refused_total}");
    }
}
