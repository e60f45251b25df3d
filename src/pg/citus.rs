//! Citus: what the write path needs to know when the trigger fires on a
//! shard of a distributed log, on the worker that holds it.
//!
//! `workflow_ext.distribute()` (sql/citus.sql) distributes a log by
//! `run_id` together with `workflow_ext.distributed_runs`, co-located, so a
//! run's events and its run row are always on one node. There the trigger
//! fires on the log's shard (`<log>_<shardid>`), and writes the run row in
//! the run table's shard with the same hash range, addressed by name: a
//! plain local statement, no distributed query from inside a shard. The
//! run row is keyed by the *logical* log's name, which is the same on every
//! node and survives shard moves (an OID is neither: it differs per node,
//! and Citus copies shards in binary).
//!
//! The facts come from Citus's own catalog (`pg_dist_shard`, owned by the
//! superuser), never from the log's owner, and are read once per shard and
//! backend (the trigger keeps its plans).

use crate::errors::{or_internal, WfError, WfResult};
use crate::rules::lifecycle::EventType;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::ffi::CStr;

/// Where the run rows of a shard of a distributed log live.
pub(crate) struct ShardOfLog {
    /// The logical log, schema-qualified and quoted: the run rows' key.
    pub(crate) log_name: String,
    /// The co-located shard of `workflow_ext.distributed_runs` (or of
    /// `distributed_runs_varchar`, for a varchar run_id), schema-qualified.
    pub(crate) runs_shard: String,
    /// This shard's id, and its schema.
    pub(crate) shard_id: i64,
    pub(crate) namespace: pg_sys::Oid,
}

impl ShardOfLog {
    /// Whether the shard has its copy of the extension's creation index,
    /// valid (Citus names it `<index>_<shardid>`). Syscache lookups: a
    /// client backend on a worker does not see shards in `pg_class`.
    pub(crate) fn has_creation_index(&self) -> bool {
        let name =
            std::ffi::CString::new(format!("{}_{}", EventType::CREATION_INDEX, self.shard_id))
                .unwrap_or_default();
        // SAFETY: syscache lookups by name and OID.
        unsafe {
            let index = pg_sys::get_relname_relid(name.as_ptr(), self.namespace);
            index != pg_sys::InvalidOid
                && pg_sys::get_rel_relkind(index) == pg_sys::RELKIND_INDEX as std::ffi::c_char
                && pg_sys::get_index_isvalid(index)
        }
    }
}

/// Whether Citus is installed in this database (a syscache lookup).
pub(crate) fn installed() -> bool {
    // SAFETY: a catalog lookup by name; InvalidOid when missing.
    unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Whether Citus holds the open relation `rel` (a distributed, reference or
/// Citus local table): its rows are then in shards, and what its own heap
/// holds is nothing (a shell) or rows Citus left behind when it distributed
/// it, which a direct read must not take for the log. Citus gives every
/// table it holds, on every node, its internal `truncate_trigger` (named
/// `truncate_trigger_<oid>`, as PostgreSQL names internal triggers); read from
/// the relation's trigger descriptor, no catalog query (users cannot create
/// an internal trigger).
///
/// # Safety
/// `rel` is an open relation.
pub(crate) unsafe fn holds(rel: pg_sys::Relation) -> bool {
    // SAFETY: an open relation's trigger descriptor, NULL without triggers.
    unsafe {
        let desc = (*rel).trigdesc;
        if desc.is_null() {
            return false;
        }
        let n = usize::try_from((*desc).numtriggers).unwrap_or(0);
        (0..n).any(|i| {
            let t = (*desc).triggers.add(i);
            // An internal trigger's name gets "_<its oid>".
            (*t).tgisinternal
                && CStr::from_ptr((*t).tgname)
                    .to_bytes()
                    .strip_prefix(b"truncate_trigger_")
                    .is_some_and(|oid| !oid.is_empty() && oid.iter().all(u8::is_ascii_digit))
        })
    }
}

/// When the relation named `relname` in schema `nsp` is a shard of a
/// Citus-distributed table on this node, where its run rows live. `Ok(None)`:
/// not a shard (no Citus, or an ordinary table). An error: a shard of a log
/// distributed without `workflow_ext.distribute()`, whose run rows would
/// have no home that moves with it.
pub(crate) fn shard_of_log(
    client: &SpiClient<'_>,
    relname: &CStr,
    nsp: pg_sys::Oid,
) -> WfResult<Option<ShardOfLog>> {
    if !installed() {
        return Ok(None);
    }
    // A shard is named `<table>_<shardid>` (Citus's shard_name()).
    let Some(shard_id) = relname
        .to_str()
        .ok()
        .and_then(|n| n.rsplit_once('_'))
        .and_then(|(_, id)| id.parse::<i64>().ok())
    else {
        return Ok(None);
    };
    let row = or_internal!(
        client.select(
            // The run table's shard of the same hash range, only when the
            // two are co-located (same shard count, moved together).
            "SELECT s.logicalrelid::pg_catalog.oid, \
                    (SELECT pg_catalog.shard_name(r.logicalrelid, r.shardid, false) \
                       FROM pg_catalog.pg_dist_shard r \
                       JOIN pg_catalog.pg_dist_partition pr \
                         ON pr.logicalrelid OPERATOR(pg_catalog.=) r.logicalrelid \
                       JOIN pg_catalog.pg_dist_partition pl \
                         ON pl.logicalrelid OPERATOR(pg_catalog.=) s.logicalrelid \
                      WHERE r.logicalrelid OPERATOR(pg_catalog.=) \
                            ANY (ARRAY[pg_catalog.to_regclass('workflow_ext.distributed_runs'), \
                                       pg_catalog.to_regclass('workflow_ext.distributed_runs_varchar')]) \
                        AND pr.colocationid OPERATOR(pg_catalog.=) pl.colocationid \
                        AND r.shardminvalue OPERATOR(pg_catalog.=) s.shardminvalue \
                      LIMIT 1) \
               FROM pg_catalog.pg_dist_shard s \
              WHERE s.shardid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[shard_id.into()],
        ),
        "citus shard"
    );
    if row.is_empty() {
        return Ok(None);
    }
    let row = row.first();
    let logical: pg_sys::Oid = or_internal!(row.get(1), "citus shard").unwrap_or_default();
    let runs_shard: Option<String> = or_internal!(row.get(2), "citus shard");
    // The name must be the logical table's plus this shard id, in its
    // schema: else `rel` is a table that only looks like a shard.
    // SAFETY: syscache lookups.
    let is_the_shard = unsafe {
        let name = pg_sys::get_rel_name(logical);
        !name.is_null()
            && pg_sys::get_rel_namespace(logical) == nsp
            && format!("{}_{shard_id}", CStr::from_ptr(name).to_string_lossy()).as_bytes()
                == relname.to_bytes()
    };
    if !is_the_shard {
        return Ok(None);
    }
    let log_name = crate::pg::owner::qualified_name(logical)
        .unwrap_or_else(|| crate::errors::internal!("relation {} has no name", logical.to_u32()));
    match runs_shard {
        Some(runs_shard) => Ok(Some(ShardOfLog {
            log_name,
            runs_shard,
            shard_id,
            namespace: nsp,
        })),
        None => Err(WfError::DistributedWithoutRuns { log: log_name }),
    }
}

/// Whether Citus distributes relation `rel` (its metadata, on this node:
/// the coordinator's, or a worker's synced copy). Its rows are then in
/// shards on the workers, not in the relation itself.
pub(crate) fn is_distributed(client: &SpiClient<'_>, rel: pg_sys::Oid) -> bool {
    installed()
        && or_internal!(
            client.select(
                "SELECT 1 FROM pg_catalog.pg_dist_partition \
                  WHERE logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
                Some(1),
                &[rel.into()],
            ),
            "citus table"
        )
        .first()
        .get::<i32>(1)
        .ok()
        .flatten()
        .is_some()
}

/// Runs one command on every node of the formation at once (Citus's
/// `run_command_on_all_nodes`), the command being `template` formatted
/// (`format()`, `%L`) with `args` in SQL, so no value is spliced in here.
/// Returns each node's result text; a node that fails fails the call
/// (`what` names it in the error).
fn on_every_node(
    client: &SpiClient<'_>,
    what: &'static str,
    template: &str,
    args: Vec<pgrx::datum::DatumWithOid<'_>>,
) -> WfResult<Vec<String>> {
    let placeholders: Vec<String> = (2..=args.len() + 1).map(|i| format!("${i}")).collect();
    let nodes = or_internal!(
        client.select(
            &format!(
                "SELECT n.success, \
                        (SELECT d.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) d.nodeport \
                           FROM pg_catalog.pg_dist_node d WHERE d.nodeid OPERATOR(pg_catalog.=) n.nodeid), \
                        n.result \
                   FROM pg_catalog.run_command_on_all_nodes(pg_catalog.format($1::pg_catalog.text, {})) n",
                placeholders.join(", ")
            ),
            None,
            &std::iter::once(template.into()).chain(args).collect::<Vec<_>>(),
        ),
        "{what} on every node"
    );
    let mut results = Vec::new();
    for row in nodes {
        let ok: bool = or_internal!(row.get(1), "node result").unwrap_or(false);
        let node: String = or_internal!(row.get(2), "node").unwrap_or_default();
        let result: String = or_internal!(row.get(3), "node result").unwrap_or_default();
        if !ok {
            return Err(WfError::NodeFailed {
                what,
                node,
                error: result,
            });
        }
        results.push(result);
    }
    Ok(results)
}

/// One run `scan()` reports: run_id, events, anomalies, first_seq,
/// first_anomaly, first_detail.
pub(crate) type ScanRow = (Option<String>, i64, i64, i64, String, String);

/// `scan()` of a distributed log: every node scans the shards it holds
/// (`workflow_ext.scan_local_shards`, all at once), and the runs they
/// report come back here, ordered by run id. A run is whole in one shard,
/// so each is audited whole; a node that fails fails the scan.
pub(crate) fn scan_on_every_node(
    client: &SpiClient<'_>,
    log: &str,
    since: Option<pgrx::datum::TimestampWithTimeZone>,
) -> WfResult<Vec<ScanRow>> {
    let results = on_every_node(
        client,
        "scan",
        "SELECT COALESCE(pg_catalog.json_agg(f), '[]') \
           FROM workflow_ext.scan_local_shards(%L::pg_catalog.regclass, %L::pg_catalog.timestamptz) f",
        vec![log.into(), since.into()],
    )?;
    let rows = or_internal!(
        client.select(
            "SELECT x.run_id, x.events, x.anomalies, x.first_seq, x.first_anomaly, x.first_detail \
               FROM pg_catalog.unnest($1::pg_catalog.text[]) r, \
                    pg_catalog.json_to_recordset(r::pg_catalog.json) \
                      AS x(run_id text, events bigint, anomalies bigint, first_seq bigint, \
                           first_anomaly text, first_detail text) \
              ORDER BY x.run_id COLLATE \"C\" NULLS LAST",
            None,
            &[results.into()],
        ),
        "scan results"
    );
    Ok(rows
        .map(|r| {
            (
                r.get::<String>(1).ok().flatten(),
                r.get::<i64>(2).ok().flatten().unwrap_or(0),
                r.get::<i64>(3).ok().flatten().unwrap_or(0),
                r.get::<i64>(4).ok().flatten().unwrap_or(0),
                r.get::<String>(5).ok().flatten().unwrap_or_default(),
                r.get::<String>(6).ok().flatten().unwrap_or_default(),
            )
        })
        .collect())
}

/// `purge_runs()` of the distributed own log: every node purges the shards
/// it holds (`workflow_ext.purge_local_shards`, all at once); returns the
/// runs removed on all of them. A node that fails fails the purge (each
/// node's purge is its own transaction: what the others removed stays
/// removed, as a later `purge_runs` would have removed it).
pub(crate) fn purge_on_every_node(
    client: &SpiClient<'_>,
    older_than: pgrx::datum::Interval,
) -> WfResult<i64> {
    let results = on_every_node(
        client,
        "purge",
        "SELECT workflow_ext.purge_local_shards(%L::pg_catalog.interval)",
        vec![older_than.into()],
    )?;
    Ok(results
        .iter()
        .map(|r| r.trim().parse::<i64>().unwrap_or(0))
        .fold(0i64, i64::saturating_add))
}

/// A shard of the distributed own log on this node, with the co-located
/// shards of its per-run state (same hash range), as qualified names
/// (Citus's `shard_name`, of the extension's own tables).
pub(crate) struct LocalShards {
    pub(crate) log: String,
    pub(crate) runs: String,
    pub(crate) joins: String,
    pub(crate) join_members: String,
}

/// The shards of the distributed own log this node holds ([`LocalShards`]).
pub(crate) fn local_shards(client: &SpiClient<'_>) -> Vec<LocalShards> {
    if !installed() {
        return Vec::new();
    }
    let rows = or_internal!(
        client.select(
            "SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid, false), \
                    pg_catalog.shard_name(r.logicalrelid, r.shardid, false), \
                    pg_catalog.shard_name(j.logicalrelid, j.shardid, false), \
                    pg_catalog.shard_name(m.logicalrelid, m.shardid, false) \
               FROM pg_catalog.pg_dist_shard s \
               JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid \
               JOIN pg_catalog.pg_dist_shard r \
                 ON r.logicalrelid OPERATOR(pg_catalog.=) 'workflow_ext.distributed_runs'::pg_catalog.regclass \
                AND r.shardminvalue OPERATOR(pg_catalog.=) s.shardminvalue \
               JOIN pg_catalog.pg_dist_shard j \
                 ON j.logicalrelid OPERATOR(pg_catalog.=) 'workflow_ext.joins'::pg_catalog.regclass \
                AND j.shardminvalue OPERATOR(pg_catalog.=) s.shardminvalue \
               JOIN pg_catalog.pg_dist_shard m \
                 ON m.logicalrelid OPERATOR(pg_catalog.=) 'workflow_ext.join_members'::pg_catalog.regclass \
                AND m.shardminvalue OPERATOR(pg_catalog.=) s.shardminvalue \
              WHERE s.logicalrelid OPERATOR(pg_catalog.=) 'workflow_ext.events'::pg_catalog.regclass \
                AND p.groupid OPERATOR(pg_catalog.=) (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) \
              ORDER BY s.shardid",
            None,
            &[],
        ),
        "local shards"
    );
    rows.map(|r| {
        let name = |n: usize| -> String {
            or_internal!(r.get::<String>(n), "local shards")
                .unwrap_or_else(|| crate::errors::internal!("a local shard has no name"))
        };
        LocalShards {
            log: name(1),
            runs: name(2),
            joins: name(3),
            join_members: name(4),
        }
    })
    .collect()
}

/// Whether the own log is distributed (then its run rows, joins and
/// members are in co-located distributed tables).
pub(crate) fn own_log_distributed(client: &SpiClient<'_>) -> bool {
    // SAFETY: catalog lookups by name.
    let own_log = unsafe {
        pg_sys::get_relname_relid(
            c"events".as_ptr(),
            pg_sys::get_namespace_oid(c"workflow_ext".as_ptr(), false),
        )
    };
    is_distributed(client, own_log)
}

thread_local! {
    /// Whether this backend is Citus's apply worker for a shard move or
    /// split (it never changes for a process): asked once.
    static SHARD_TRANSFER: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the row being inserted into `rel` (a shard of a distributed log)
/// is one of the rows Citus copies into the new shards while
/// `workflow_ext.distribute()` distributes a log with events: rows the log
/// admitted and numbered already, whose run rows distribute() moved into
/// the run table. distribute() says so with `workflow_ext.distributing` =
/// the log's name, sent to the workers' sessions by Citus's SET LOCAL
/// propagation, and reset after the copy; only a superuser's session is
/// believed (anyone can set the option; a superuser can disable triggers
/// anyway), and only for a shard of that log.
pub(crate) fn in_distribution_copy(relname: &CStr, nsp: pg_sys::Oid) -> bool {
    // SAFETY: reads of a setting (NULL when unset), the session user and the
    // syscache. The setting first: the one check every append pays.
    unsafe {
        let value = pg_sys::GetConfigOption(c"workflow_ext.distributing".as_ptr(), true, false);
        if value.is_null()
            || *value == 0
            || !pg_sys::superuser_arg(pg_sys::GetSessionUserId())
            || !installed()
        {
            return false;
        }
        let Ok(log) = CStr::from_ptr(value).to_str() else {
            return false;
        };
        let Some((schema, table)) = log.split_once('.') else {
            return false;
        };
        let schema_oid = pg_sys::get_namespace_oid(
            std::ffi::CString::new(schema.trim_matches('"'))
                .unwrap_or_default()
                .as_ptr(),
            true,
        );
        schema_oid == nsp
            && relname
                .to_str()
                .ok()
                .and_then(|n| n.strip_prefix(table.trim_matches('"')))
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// Whether this backend is the logical-replication apply worker of a Citus
/// shard move or split, replaying on the new shard rows that the old one
/// already admitted and numbered. Citus names those subscriptions
/// `citus_shard_move_subscription_…` / `citus_shard_split_subscription_…`
/// (multi_logical_replication.c); creating a subscription takes a
/// superuser (PostgreSQL 15) or pg_create_subscription (16 on), and a
/// database without Citus never lets a row through (docs/security.md).
pub(crate) fn in_shard_transfer() -> bool {
    // SAFETY: a read of the backend's kind.
    if !unsafe { pg_sys::IsLogicalWorker() } || !installed() {
        return false;
    }
    if let Some(known) = SHARD_TRANSFER.with(|c| c.get()) {
        return known;
    }
    let known = subscription_name().is_some_and(|name| {
        name.starts_with("citus_shard_move_subscription_")
            || name.starts_with("citus_shard_split_subscription_")
    });
    SHARD_TRANSFER.with(|c| c.set(Some(known)));
    known
}

/// The subscription this logical-replication worker applies: its OID is
/// the last number of the worker's name ("logical replication … worker
/// for subscription <oid>[ sync <relid>]").
fn subscription_name() -> Option<String> {
    // SAFETY: the worker's own registration entry, set for its lifetime.
    let worker = unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        if entry.is_null() {
            return None;
        }
        CStr::from_ptr((*entry).bgw_name.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let oid: u32 = worker
        .split_once("for subscription ")?
        .1
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    or_internal!(
        Spi::get_one_with_args::<String>(
            "SELECT subname::pg_catalog.text FROM pg_catalog.pg_subscription \
              WHERE oid OPERATOR(pg_catalog.=) $1",
            &[pg_sys::Oid::from(oid).into()],
        ),
        "subscription name"
    )
}

/// Whether this transaction wrote a hook token's row on another node
/// (sql/citus.sql, track_hook_tokens_on_shard). Such a write is a nested
/// distributed statement of the run's node; Citus commits it with the
/// event (two-phase where it must) at this node's COMMIT, but does nothing
/// for it at a PREPARE TRANSACTION, which it allows in the backends that
/// run a coordinator's statements: the prepared event would be committed
/// later without its token row, or the other way round. So PREPARE is
/// refused instead.
static CROSS_NODE_WRITE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the transaction (see [`CROSS_NODE_WRITE`]).
#[pg_extern(sql = false)] // declared in sql/citus.sql
fn note_cross_node_write() {
    CROSS_NODE_WRITE.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn refuse_prepare_after_cross_node_write() {
    if CROSS_NODE_WRITE.load(std::sync::atomic::Ordering::Relaxed) {
        crate::errors::raise!(WfError::CrossNodeWriteNotPreparable);
    }
}

fn cross_node_write_ended() {
    CROSS_NODE_WRITE.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Ties [`CROSS_NODE_WRITE`] to the transaction (from `_PG_init`).
pub(crate) fn register_transaction_edges() {
    static EDGES: crate::pg::transaction::TransactionEdges =
        crate::pg::transaction::TransactionEdges {
            before_commit: || {},
            before_prepare: refuse_prepare_after_cross_node_write,
            ended: cross_node_write_ended,
            // The nested write of a rolled-back subtransaction may still be
            // open on the other node until the end: the mark stays.
            subtransaction_aborted: |_| {},
        };
    crate::pg::transaction::on_transaction_edges(&EDGES);
}

/// The primary key of `workflow_ext.hook_tokens` (sql/schema.sql; the
/// Citus tests check this copy against the catalog): a token held by
/// another active hook fails with its name.
pub(crate) const HOOK_TOKEN_CONSTRAINT: &str = "workflow_hook_token_unique";

/// The unique constraints whose names are the API: clients tell a benign
/// "already exists" (the creation index) or a token conflict by them.
const LOGICAL_CONSTRAINTS: [&str; 2] = [EventType::CREATION_INDEX, HOOK_TOKEN_CONSTRAINT];

/// A duplicate creation (or token) on a shard fails with the shard's index
/// name (`workflow_events_entity_creation_unique_102008`), and when Citus
/// re-raises a worker's error on the node the client is connected to it
/// keeps the SQLSTATE, message and DETAIL but drops the constraint name.
/// Clients that tell a benign "already exists" by that name (the DevKit's
/// world-postgres) would see a raw 23505. So the error is given back the
/// name a single node reports, in both the message and the constraint
/// field: the logical constraint's name, returned with the message. None:
/// not such an error.
pub(crate) fn logical_unique_violation(
    message: &str,
    constraint: Option<&str>,
) -> Option<(String, &'static str)> {
    let named = message
        .strip_prefix("duplicate key value violates unique constraint \"")?
        .strip_suffix('"')?;
    LOGICAL_CONSTRAINTS.into_iter().find_map(|logical| {
        let suffix = named.strip_prefix(logical)?;
        let matches = match suffix.strip_prefix('_') {
            // The shard's index: raised here, or re-raised without the name.
            Some(id) => {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && constraint.is_none_or(|c| c == named)
            }
            // Named already (by the worker's own hook), the name dropped on
            // the way.
            None => suffix.is_empty() && constraint.is_none(),
        };
        matches.then(|| {
            (
                format!("duplicate key value violates unique constraint \"{logical}\""),
                logical,
            )
        })
    })
}

static mut PREVIOUS_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// Installs [`name_creation_conflicts`] (from `_PG_init`). It sees the
/// errors this backend reports, so it must be loaded where clients connect:
/// `shared_preload_libraries` on every node of a Citus cluster.
pub(crate) fn register_error_hook() {
    // SAFETY: _PG_init runs once per backend, before any error is reported;
    // the previous hook is kept and called.
    unsafe {
        PREVIOUS_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(name_creation_conflicts);
    }
}

/// What the error hook does to an error Citus passes on from a shard.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Restored {
    /// A 23505 (or a COPY's XX000 that was one) on a shard's copy of a
    /// logical constraint: that constraint's message and name, SQLSTATE 23505.
    Unique {
        message: String,
        constraint: &'static str,
    },
    /// A COPY's XX000 whose DETAIL is a refusal's: the refusal's SQLSTATE.
    Refusal { code: pgrx::PgSqlErrorCode },
}

/// What an error of SQLSTATE `code` with these fields had on the shard that
/// raised it, where Citus lost it on the way: the constraint name of any
/// 23505 ([`logical_unique_violation`]), and the SQLSTATE of a COPY error,
/// which Citus re-raises as XX000 with the shard's message and DETAIL only
/// (`ReportCopyError`). None: nothing to restore.
pub(crate) fn restore_shard_error(
    code: pgrx::PgSqlErrorCode,
    message: &str,
    detail: Option<&str>,
    constraint: Option<&str>,
) -> Option<Restored> {
    use pgrx::PgSqlErrorCode::{ERRCODE_INTERNAL_ERROR, ERRCODE_UNIQUE_VIOLATION};
    match code {
        ERRCODE_UNIQUE_VIOLATION | ERRCODE_INTERNAL_ERROR => {}
        _ => return None,
    }
    if let Some((message, constraint)) = logical_unique_violation(message, constraint) {
        return Some(Restored::Unique {
            message,
            constraint,
        });
    }
    if code == ERRCODE_INTERNAL_ERROR {
        return detail
            .and_then(crate::errors::refusal_code_of_detail)
            .map(|code| Restored::Refusal { code });
    }
    None
}

/// emit_log_hook: see [`restore_shard_error`]. Runs while an error is
/// being reported: no catalog access, no allocation but in the error's own
/// memory context, nothing that can raise.
unsafe extern "C-unwind" fn name_creation_conflicts(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the error being reported; its strings are
    // NUL-terminated or NULL, and belong to assoc_context.
    unsafe {
        let text = |p: *const std::ffi::c_char| {
            (!p.is_null())
                .then(|| CStr::from_ptr(p).to_str().ok())
                .flatten()
        };
        let code = if edata.is_null() {
            None
        } else if (*edata).sqlerrcode == pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION as i32 {
            Some(pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION)
        } else if (*edata).sqlerrcode == pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32 {
            Some(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR)
        } else {
            None
        };
        if let (Some(code), Some(message)) = (code, code.and_then(|_| text((*edata).message))) {
            let restored = restore_shard_error(
                code,
                message,
                text((*edata).detail),
                text((*edata).constraint_name),
            );
            match restored {
                Some(Restored::Unique {
                    message,
                    constraint,
                }) => {
                    if let (Ok(message), Ok(constraint)) = (
                        std::ffi::CString::new(message),
                        std::ffi::CString::new(constraint),
                    ) {
                        let ctx = (*edata).assoc_context;
                        (*edata).sqlerrcode = pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION as i32;
                        (*edata).message = pg_sys::MemoryContextStrdup(ctx, message.as_ptr());
                        (*edata).constraint_name =
                            pg_sys::MemoryContextStrdup(ctx, constraint.as_ptr());
                    }
                }
                Some(Restored::Refusal { code }) => (*edata).sqlerrcode = code as i32,
                None => {}
            }
        }
        if let Some(previous) = PREVIOUS_EMIT_LOG_HOOK {
            previous(edata);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::logical_unique_violation;

    fn fix(message: &str, constraint: Option<&str>) -> Option<String> {
        logical_unique_violation(message, constraint).map(|(m, name)| {
            assert!(m.ends_with(&format!("\"{name}\"")));
            m
        })
    }

    #[test]
    fn a_shard_creation_conflict_gets_the_logical_name() {
        let single = "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique\"";
        let shard = "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique_102022\"";
        // Re-raised by Citus (no constraint), or raised on the shard's node.
        assert_eq!(fix(shard, None).as_deref(), Some(single));
        assert_eq!(
            fix(shard, Some("workflow_events_entity_creation_unique_102022")).as_deref(),
            Some(single)
        );
        // Named by the worker, the name dropped by Citus on the way back.
        assert_eq!(fix(single, None).as_deref(), Some(single));
        // Anything else is left alone.
        assert_eq!(
            fix(single, Some("workflow_events_entity_creation_unique")),
            None
        );
        assert_eq!(fix(shard, Some("other")), None);
        assert_eq!(
            fix(
                "duplicate key value violates unique constraint \"events_pkey_102010\"",
                None
            ),
            None
        );
        assert_eq!(fix("duplicate key value violates unique constraint \"workflow_events_entity_creation_unique_\"", None), None);
        assert_eq!(fix("duplicate key value violates unique constraint \"workflow_events_entity_creation_unique_12a\"", None), None);
    }

    #[test]
    fn a_copy_error_gets_its_sqlstate_back() {
        use super::{restore_shard_error, Restored};
        use pgrx::PgSqlErrorCode as C;
        let late =
            "step_created refused for step \"s3\" of run \"r\": the run is already completed";
        let detail = "anomaly: event_after_run_terminal; run state: completed";
        assert_eq!(
            restore_shard_error(C::ERRCODE_INTERNAL_ERROR, late, Some(detail), None),
            Some(Restored::Refusal {
                code: C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            })
        );
        assert_eq!(
            restore_shard_error(
                C::ERRCODE_INTERNAL_ERROR,
                "x",
                Some("anomaly: missing_run_created; run state: none"),
                None
            ),
            Some(Restored::Refusal {
                code: C::ERRCODE_FOREIGN_KEY_VIOLATION
            })
        );
        // Every anomaly code the writer can raise maps back to its SQLSTATE.
        for v in [
            "missing_run_created",
            "duplicate_creation",
            "missing_creation",
            "event_after_terminal",
            "event_after_run_terminal",
            "illegal_transition",
        ] {
            let violation = crate::rules::lifecycle::Violation::from_code(v).expect(v);
            assert_eq!(violation.code(), v);
        }
        // A COPY's duplicate: 23505 and the logical name.
        let dup = "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique_102010\"";
        assert_eq!(
            restore_shard_error(C::ERRCODE_INTERNAL_ERROR, dup, Some("Key (...) already exists."), None),
            Some(Restored::Unique {
                message: "duplicate key value violates unique constraint \"workflow_events_entity_creation_unique\"".into(),
                constraint: "workflow_events_entity_creation_unique"
            })
        );
        // Nothing else: other codes, other details, a real internal error.
        assert_eq!(
            restore_shard_error(
                C::ERRCODE_INTERNAL_ERROR,
                late,
                Some("anomaly: nonsense; run state: x"),
                None
            ),
            None
        );
        assert_eq!(
            restore_shard_error(
                C::ERRCODE_INTERNAL_ERROR,
                "workflow_ext internal error: x",
                None,
                None
            ),
            None
        );
        assert_eq!(
            restore_shard_error(C::ERRCODE_DATA_EXCEPTION, late, Some(detail), None),
            None
        );
        assert_eq!(
            restore_shard_error(C::ERRCODE_UNIQUE_VIOLATION, late, Some(detail), None),
            None
        );
    }

    #[test]
    fn a_shard_token_conflict_gets_the_logical_name() {
        let single =
            "duplicate key value violates unique constraint \"workflow_hook_token_unique\"";
        let shard =
            "duplicate key value violates unique constraint \"workflow_hook_token_unique_102100\"";
        assert_eq!(
            logical_unique_violation(shard, None),
            Some((single.to_owned(), "workflow_hook_token_unique"))
        );
        assert_eq!(fix(single, None).as_deref(), Some(single));
        assert_eq!(fix(single, Some("workflow_hook_token_unique")), None);
    }
}
