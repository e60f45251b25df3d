//! `replay` and `scan`: stream a stored log through the auditor
//! ([`crate::audit::auditor`]) and return what is wrong. The source is the
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

use super::auditor::TOKEN_CONFLICT;
use super::source::{columns, inspect, order_by, Source};
use super::stream::stream;
use super::tokens::cross_run_token_conflicts;
use crate::errors::{internal, or_internal, or_raise, raise, WfError};
use crate::rules::lifecycle::EventType;
use crate::rules::validate;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::HashSet;

/// One anomaly row of `replay`.
type Row = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

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
    let mut out: Vec<crate::pg::citus::ScanRow> = Vec::new();
    Spi::connect(|client| {
        let src = or_raise!(inspect(client, source));
        if since.is_some() && !src.has_created_at {
            raise!(WfError::SourceMissingColumns {
                source: src.name.clone(),
                missing: vec!["created_at"]
            });
        }
        // A log Citus distributes: each node scans its shards.
        if src.distributed {
            out = or_raise!(crate::pg::citus::scan_on_every_node(
                client, &src.name, since
            ));
            return;
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
    use crate::audit::auditor::RUN_CREATED_NOT_FIRST;
    use crate::pg::transaction::in_subtransaction;
    use crate::rules::lifecycle::{CorrelationRule, EventType};
    use crate::testing::{writer_code, Rng};
    use pgrx::prelude::*;

    /// Property: replay and scan read the own log straight from its primary
    /// key (src/pg/log_scan.rs), every other source through SPI. Random rows,
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
