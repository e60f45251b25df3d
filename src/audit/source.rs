//! A source to replay: any table shaped like the DevKit's
//! `workflow.workflow_events` (id, run_id, type, correlation_id, and
//! optionally seq, created_at and a jsonb payload), inspected once per call,
//! and the select list and order its rows are read in.

use crate::errors::{internal, or_internal, WfError, WfResult};
use crate::pg::plans;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::cell::OnceCell;

pub(super) struct Source {
    /// Quoted, qualified name, from regclass output.
    pub(super) name: String,
    pub(super) has_seq: bool,
    pub(super) has_created_at: bool,
    /// `run_id` is declared NOT NULL: the source has no NULL run.
    pub(super) run_id_not_null: bool,
    /// A jsonb `payload` column: hook tokens can be read (the DevKit's 4.x
    /// rows keep their data in payload_cbor, which SQL cannot read).
    pub(super) has_jsonb_payload: bool,
    /// The extension's own log, whose `type` is the enum: it is read as the
    /// enum's OID and named from these labels, instead of going through the
    /// enum's output and text's input twice per row.
    pub(super) enum_labels: Option<Vec<(pg_sys::Oid, String)>>,
    /// Citus distributes it: its rows are in shards on the workers, read
    /// through Citus's planner (never straight from the local table).
    pub(super) distributed: bool,
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

pub(super) fn inspect(client: &SpiClient<'_>, oid: pg_sys::Oid) -> WfResult<Source> {
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
    // casts and operators the audit's queries call (src/pg/log_shape.rs).
    crate::pg::log_shape::check_relation(oid, &name, crate::pg::log_shape::Use::Source)?;
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
        distributed: crate::pg::citus::is_distributed(client, oid),
        enum_labels,
        has_seq: has("seq"),
        has_created_at: has("created_at"),
        run_id_not_null,
        has_jsonb_payload,
        name,
    })
}

pub(super) fn order_by(src: &Source) -> &'static str {
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
pub(super) fn columns(src: &Source) -> String {
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
pub(super) fn token_column(src: &Source) -> &'static str {
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

pub(super) fn seq_column(src: &Source) -> &'static str {
    if src.has_seq {
        "seq::bigint"
    } else {
        "NULL::bigint"
    }
}
