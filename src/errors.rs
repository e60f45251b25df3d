//! Every error a caller can cause, and the SQLSTATE it is raised with.
//!
//! Nothing else in the crate calls `ereport` for a user error: the other
//! modules build a [`WfError`] and raise it with [`raise!`] or
//! [`or_raise!`], so the README's SQLSTATE table can be checked against this
//! one file. Bugs (statements of our own that cannot fail unless the
//! extension is broken) are raised with [`internal!`] / [`or_internal!`] as
//! XX000.
//!
//! Messages follow PostgreSQL's style: a short primary message stating the
//! fact, with no function names; the facts as a sentence in DETAIL; advice
//! in HINT. [`WfError::report`] declares all four for each error in one arm
//! of one exhaustive match. The macros record the real source line and function of the
//! raise (PostgreSQL's LOCATION), not this file's.
//!
//! **API contract**: a refused event's DETAIL is `anomaly: <code>; run state:
//! <state>`, where `<code>` is one of the anomaly codes `replay` reports.
//! Clients parse it; change it only with a major version.

use crate::rules::lifecycle::{EntityKind, EventType, State, Violation};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

/// Longest run id, correlation id, event id, join or member key accepted.
pub const MAX_IDENT_BYTES: usize = 255;

#[derive(Debug)]
pub enum WfError {
    /// A required argument (or column) is NULL. 22004.
    NullArgument { arg: &'static str },
    /// A required argument is the empty string. 22023.
    EmptyArgument { arg: &'static str },
    /// An identifier longer than [`MAX_IDENT_BYTES`]. 22001.
    TooLong { arg: &'static str, len: usize },
    /// A type name outside the vocabulary. 22023.
    UnknownEventType { given: String },
    /// `append_suspension_event` with a type that is not a creation. 22023.
    NotSuspension { event: EventType },
    /// An entity event without its correlation id. 22004.
    CorrelationRequired { event: EventType },
    /// A run lifecycle event with a correlation id. 22023.
    CorrelationForbidden { event: EventType },
    /// A payload that is not a JSON object. 22023.
    PayloadNotObject,
    /// A payload larger than `workflow_ext.max_payload_bytes`. 54000.
    PayloadTooLarge { bytes: usize, limit: usize },
    /// `append_suspension_events` with more elements than
    /// `batch::MAX_BATCH_EVENTS`. 54000.
    BatchTooLarge { events: usize, limit: usize },
    /// A raw INSERT that names a seq other than the next one. 22023.
    SeqMismatch { given: i64, next: i64 },
    /// `append_suspension_events` arrays of different lengths, or not
    /// one-dimensional (element counts, `None`: no payloads). 22023.
    BatchArraysMismatch {
        correlation_ids: usize,
        types: usize,
        payloads: Option<usize>,
    },
    /// The lifecycle forbids the event. 23503 (missing run / entity),
    /// 23505 (a duplicate the index cannot see) or 55000.
    Refused {
        violation: Violation,
        run_id: String,
        correlation_id: Option<String>,
        event: EventType,
        run_state: Option<State>,
    },
    /// UPDATE / DELETE / TRUNCATE of the append-only log (`op`: "update",
    /// "delete from", "truncate"). 0A000.
    AppendOnly { op: &'static str, table: String },
    /// A join called with an `expected` other than the join's. 22023.
    JoinExpectedMismatch {
        join_key: String,
        expected: i32,
        recorded: i32,
    },
    /// `expected` below 1. 22023.
    JoinExpectedInvalid { expected: i32 },
    /// `join_arrive` for a run `workflow_ext.events` does not have. 23503.
    JoinRunNotFound { run_id: String },
    /// A new member arriving at a join that already fired. 55000.
    JoinAlreadyComplete {
        join_key: String,
        member_key: String,
        expected: i32,
    },
    /// `purge_runs` with a negative interval. 22023.
    NegativeInterval,
    /// A bootstrap name already applied with another checksum. 55000.
    BootstrapChecksumChanged {
        name: String,
        applied: String,
        given: String,
    },
    /// Bootstrap DDL with BEGIN / COMMIT / ROLLBACK / SAVEPOINT. 0A000.
    BootstrapTransactionControl { name: String },
    /// Bootstrap DDL with COPY to or from the client. 0A000.
    BootstrapCopy { name: String },
    /// `bootstrap_end` for a name this session did not begin. 55000.
    BootstrapNotBegun { name: String },
    /// `bootstrap_begin` for a name this session already holds. 55000.
    BootstrapAlreadyBegun { name: String },
    /// `bootstrap`/`bootstrap_begin` gave up waiting. 55P03 / 57014.
    BootstrapWaitTimedOut { name: String, which: &'static str },
    /// `bootstrap`/`bootstrap_begin` under REPEATABLE READ or SERIALIZABLE,
    /// whose snapshot predates the lock wait and could miss the ledger row
    /// of the session it waited for. 0A000.
    BootstrapNeedsReadCommitted { name: String },
    /// `bootstrap_begin` with a negative or non-finite timeout. 22023.
    InvalidTimeout,
    /// `replay`/`scan` source that is not a relation. 42P01.
    SourceNotFound { oid: u32 },
    /// `replay`/`scan` source that is an index, sequence, …. 42809.
    SourceNotATable { source: String },
    /// `replay`/`scan` source without the needed columns. 42703.
    SourceMissingColumns {
        source: String,
        missing: Vec<&'static str>,
    },
    /// A column the extension reads, of a type outside src/pg/log_shape.rs's
    /// list (a type the table's owner chose could run the owner's code).
    /// 42804.
    LogColumnType {
        log: String,
        column: &'static str,
        actual: String,
        allowed: &'static str,
    },
    /// A duplicate creation while the log's creation index is missing or
    /// not the extension's: the trigger refuses it instead of storing it.
    /// 55000.
    CreationIndexMissing { log: String },
    /// A REPEATABLE READ or SERIALIZABLE writer whose snapshot predates the
    /// concurrent attach of the log it appends to (it would miss the
    /// run's existing rows). 40001.
    SnapshotBeforeAttach { log: String },
    /// A concurrent attach could not start its background worker
    /// (max_worker_processes reached). 53000.
    NoBackgroundWorker,
    /// An append to a shard of a log that Citus distributes without
    /// `workflow_ext.distributed_runs` co-located (distributed by hand, not
    /// by `workflow_ext.distribute()`): its run rows would have no home
    /// that moves with the run. 55000.
    DistributedWithoutRuns { log: String },
    /// PREPARE TRANSACTION of a transaction that took or released a hook
    /// token of the distributed own log: the token's row was written on
    /// another node by a nested statement, which Citus commits with the
    /// event but cannot prepare. 0A000.
    CrossNodeWriteNotPreparable,
    /// An `INSERT … ON CONFLICT` skipped, by an arbiter other than the
    /// creation index, a row the trigger had numbered, and the seq cannot
    /// be given back: a later row of the run has the next one, or the row
    /// created the run (src/write/skipped.rs). 0A000.
    NumberedRowSkipped {
        log: String,
        run_id: String,
        seq: i64,
        /// The row created the run.
        created: bool,
    },
    /// `scan()` or `purge_runs()` of a distributed log (`what`), failed on
    /// one of the Citus nodes (its error in DETAIL). 58000.
    NodeFailed {
        what: &'static str,
        node: String,
        error: String,
    },
}

/// What a [`WfError`] says: PostgreSQL's four parts of an error.
pub struct Report {
    pub code: Code,
    /// Short, factual, lower case, no function names.
    pub message: String,
    /// The facts behind the message, as a sentence.
    pub detail: Option<String>,
    /// Advice, where there is some to give.
    pub hint: Option<&'static str>,
}

impl Report {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Report {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }
}

impl WfError {
    /// Each error declared once: its SQLSTATE, message, DETAIL and HINT in
    /// one arm. The match has no catch-all, so a new variant does not
    /// compile until it says all four.
    pub fn report(&self) -> Report {
        use Code as C;
        match self {
            WfError::NullArgument { arg } => {
                Report::new(C::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{arg} must not be null"))
            }
            WfError::EmptyArgument { arg } => {
                Report::new(C::ERRCODE_INVALID_PARAMETER_VALUE, format!("{arg} must not be empty"))
            }
            WfError::TooLong { arg, len } => Report::new(
                C::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
                format!("{arg} is too long"),
            )
            .detail(format!(
                "The value is {len} bytes long; at most {MAX_IDENT_BYTES} are allowed."
            )),
            WfError::UnknownEventType { given } => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown event type \"{}\"", clip(given)),
            )
            .hint("The event types are the values of the enum workflow_ext.event_type."),
            WfError::NotSuspension { event } => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("\"{event}\" is not a creation event type"),
            )
            .hint(
                "The creation types are run_created, step_created, wait_created and hook_created; \
                 append other types with append_event.",
            ),
            WfError::CorrelationRequired { event } => Report::new(
                C::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("correlation_id must not be null for a {event} event"),
            ),
            WfError::CorrelationForbidden { event } => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("correlation_id must be null for a {event} event"),
            ),
            WfError::PayloadNotObject => {
                Report::new(C::ERRCODE_INVALID_PARAMETER_VALUE, "payload must be a JSON object")
                    .hint("Pass NULL for an event without payload.")
            }
            WfError::PayloadTooLarge { bytes, limit } => {
                Report::new(C::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "payload is too large").detail(
                    format!(
                        "The payload is {bytes} bytes; workflow_ext.max_payload_bytes is {limit}."
                    ),
                )
            }
            WfError::BatchTooLarge { events, limit } => {
                Report::new(C::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "batch is too large")
                    .detail(format!(
                        "The batch has {events} elements; at most {limit} are allowed."
                    ))
                    .hint(
                        "Split the elements into several calls: each key is idempotent, so the \
                         calls store what one call would.",
                    )
            }
            WfError::SeqMismatch { given, next } => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("seq {given} is not the next seq of the run"),
            )
            .detail(format!("The next seq of this run is {next}."))
            .hint("Leave seq out: it is assigned on insert."),
            WfError::BatchArraysMismatch {
                correlation_ids,
                types,
                payloads,
            } => Report::new(C::ERRCODE_INVALID_PARAMETER_VALUE, "input arrays do not match")
                .detail(format!(
                    "correlation_ids has {correlation_ids} elements, types {types}, payloads {}; \
                     each must be one-dimensional.",
                    payloads.map_or("none".to_string(), |n| n.to_string())
                ))
                .hint("Pass one correlation id, one type and (if any) one payload per event."),
            WfError::Refused {
                violation,
                run_id,
                correlation_id,
                event,
                run_state,
            } => refusal(*violation, run_id, correlation_id.as_deref(), *event, *run_state),
            WfError::AppendOnly { op, table } => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("cannot {op} {table}"),
            )
            .detail("The event log is append-only.")
            .hint(if table == "workflow_ext.events" {
                "Remove whole finished runs with workflow_ext.purge_runs(interval)."
            } else {
                "The table is attached to workflow_ext (workflow_ext.attached_logs); \
                 workflow_ext.detach lifts the protection."
            }),
            WfError::JoinExpectedMismatch {
                join_key,
                expected,
                recorded,
            } => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("member count does not match join \"{}\"", clip(join_key)),
            )
            .detail(format!(
                "The join waits for {recorded} members; this call says {expected}."
            )),
            WfError::JoinExpectedInvalid { expected } => {
                Report::new(C::ERRCODE_INVALID_PARAMETER_VALUE, "expected must be at least 1")
                    .detail(format!("The call says {expected}."))
            }
            WfError::JoinRunNotFound { run_id } => Report::new(
                C::ERRCODE_FOREIGN_KEY_VIOLATION,
                format!(
                    "join refused: run \"{}\" has no run_created event",
                    clip(run_id)
                ),
            )
            .detail(
                "A join belongs to a run of workflow_ext.events and is removed with it \
                 (purge_runs).",
            )
            .hint("Append run_created for the run first."),
            WfError::JoinAlreadyComplete {
                join_key,
                member_key,
                expected,
            } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("join \"{}\" has already fired", clip(join_key)),
            )
            .detail(format!(
                "It fired with its {expected} members; member \"{}\" is one too many.",
                clip(member_key)
            )),
            WfError::SnapshotBeforeAttach { log } => Report::new(
                C::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not serialize access due to a concurrent attach",
            )
            .detail(format!(
                "This transaction's snapshot was taken before the attach of {} began, so it cannot see the run's existing rows.",
                clip(log)
            ))
            .hint("Retry the transaction."),
            WfError::NoBackgroundWorker => Report::new(
                C::ERRCODE_INSUFFICIENT_RESOURCES,
                "could not start a background worker for a concurrent attach",
            )
            .detail("Every background worker slot (max_worker_processes) is in use.")
            .hint("Try again when a worker has finished, or raise max_worker_processes (needs a restart)."),
            WfError::DistributedWithoutRuns { log } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("log {log} is distributed without its run table"),
            )
            .detail(format!(
                "Citus distributes {log}, but workflow_ext.distributed_runs is not co-located with it, \
                 so the runs' locks and states would not move with their events."
            ))
            .hint("Distribute a log with workflow_ext.distribute(), which places the run table with it."),
            WfError::CrossNodeWriteNotPreparable => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot prepare a transaction that took or released a hook token on another node",
            )
            .detail(
                "On a log Citus distributes, a hook token's row is written on the node that holds \
                 the token, by the run's node, and is committed with the event; Citus cannot \
                 prepare that write for a two-phase commit.",
            )
            .hint(
                "Append hook_created, hook_disposed and a run's terminal event in transactions \
                 that write to one worker (one run, or runs on one node).",
            ),
            WfError::NumberedRowSkipped {
                log,
                run_id,
                seq,
                created,
            } => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "ON CONFLICT skipped event {seq} of run \"{}\" after it was numbered",
                    clip(run_id)
                ),
            )
            .detail(if *created {
                format!(
                    "A unique index of \"{log}\" other than its creation index skipped the \
                     run_created that created the run: the run would be left without it."
                )
            } else {
                format!(
                    "A unique index of \"{log}\" other than its creation index skipped the row \
                     after the trigger gave it seq {seq}, and a later row of the same statement \
                     has the run's next seq: skipping it would leave a gap in the run's seqs."
                )
            })
            .hint(
                "Insert a run's events one per statement, or name the creation index as the \
                 ON CONFLICT target (ON CONFLICT (run_id, correlation_id, type) WHERE …).",
            ),
            WfError::NodeFailed { what, node, error } => Report::new(
                C::ERRCODE_SYSTEM_ERROR,
                format!("the {what} failed on node {node}"),
            )
            .detail(error.clone())
            .hint("Each node works on the shards it holds: fix what the node reports and call it again."),
            WfError::NegativeInterval => {
                Report::new(C::ERRCODE_INVALID_PARAMETER_VALUE, "older_than must not be negative")
            }
            WfError::BootstrapChecksumChanged {
                name,
                applied,
                given,
            } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "bootstrap \"{}\" was applied with a different checksum",
                    clip(name)
                ),
            )
            .detail(format!(
                "Applied with checksum {applied}; this call's is {given}."
            ))
            .hint(
                "Bootstraps are versioned by name: give a changed migration a new name, e.g. app@v2.",
            ),
            WfError::BootstrapTransactionControl { name } => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("bootstrap \"{}\" contains transaction control", clip(name)),
            )
            .hint(
                "Remove BEGIN, COMMIT, ROLLBACK and SAVEPOINT: the DDL already runs in one \
                 transaction. To wrap a migrator that runs its own transactions, use \
                 bootstrap_begin and bootstrap_end.",
            ),
            WfError::BootstrapCopy { name } => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "bootstrap \"{}\" contains COPY to or from the client",
                    clip(name)
                ),
            )
            .hint(
                "Load data with INSERT, or run the migration between bootstrap_begin and \
                 bootstrap_end.",
            ),
            WfError::BootstrapNotBegun { name } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("bootstrap \"{}\" was not begun in this session", clip(name)),
            )
            .hint(
                "Call bootstrap_begin on the same connection first; a bootstrap that returned \
                 false needs no bootstrap_end.",
            ),
            WfError::BootstrapAlreadyBegun { name } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "bootstrap \"{}\" is already begun in this session",
                    clip(name)
                ),
            )
            .hint("Finish it with bootstrap_end first."),
            WfError::BootstrapWaitTimedOut { name, which } => Report::new(
                if *which == "statement_timeout" {
                    C::ERRCODE_QUERY_CANCELED
                } else {
                    C::ERRCODE_LOCK_NOT_AVAILABLE
                },
                format!("could not obtain the lock of bootstrap \"{}\"", clip(name)),
            )
            .detail(format!(
                "Another session holds it; {which} expired while waiting."
            )),
            WfError::BootstrapNeedsReadCommitted { name } => Report::new(
                C::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "bootstrap \"{}\" needs READ COMMITTED isolation",
                    clip(name)
                ),
            )
            .detail(
                "Under REPEATABLE READ or SERIALIZABLE the transaction's snapshot is older than \
                 the lock wait, so it could miss the migration of the session it waited for and \
                 apply it twice.",
            )
            .hint(
                "Call it in autocommit mode, or in a transaction begun with ISOLATION LEVEL READ \
                 COMMITTED.",
            ),
            WfError::InvalidTimeout => Report::new(
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                "timeout must be a positive interval",
            ),
            WfError::SourceNotFound { oid } => Report::new(
                C::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {oid} does not exist"),
            ),
            WfError::SourceNotATable { source } => Report::new(
                C::ERRCODE_WRONG_OBJECT_TYPE,
                format!("\"{source}\" is not a table, view or materialized view"),
            ),
            WfError::SourceMissingColumns { source, missing } => Report::new(
                C::ERRCODE_UNDEFINED_COLUMN,
                format!("relation \"{source}\" is not an event source"),
            )
            .detail(format!("It lacks the column(s) {}.", missing.join(", ")))
            .hint(
                "An event source needs the columns id, run_id, type and correlation_id \
                 (and created_at for scan with since).",
            ),
            WfError::LogColumnType {
                log,
                column,
                actual,
                allowed,
            } => Report::new(
                C::ERRCODE_DATATYPE_MISMATCH,
                format!("column \"{column}\" of \"{log}\" has type {actual}"),
            )
            .detail(format!(
                "workflow_ext reads {column} as {allowed} only: the functions a query calls on a \
                 column of another type are chosen by the type's owner."
            ))
            .hint(
                "Change the column back to one of those types; to change an attached table's \
                 columns freely, detach it first (workflow_ext.detach).",
            ),
            WfError::CreationIndexMissing { log } => Report::new(
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("the creation index of \"{log}\" is missing"),
            )
            .detail(
                "A duplicate creation is refused while the unique index \
                 workflow_events_entity_creation_unique is missing, invalid or not the extension's.",
            )
            .hint(
                "Recreate it by attaching the table again (workflow_ext.attach restores the index \
                 of an attached table).",
            ),
        }
    }

    pub fn sqlstate(&self) -> Code {
        self.report().code
    }

    /// The primary message: short, factual, lower case, no function names.
    pub fn message(&self) -> String {
        self.report().message
    }

    /// The facts behind the message, as a sentence.
    pub fn detail(&self) -> Option<String> {
        self.report().detail
    }

    /// Advice, where there is some to give.
    pub fn hint(&self) -> Option<&'static str> {
        self.report().hint
    }

    /// Raises the error as a PostgreSQL ERROR, reporting `funcname` and the
    /// caller's source line; never returns. Use [`raise!`].
    #[track_caller]
    pub fn raise_in(self, funcname: &'static str) -> ! {
        let parts = self.report();
        let mut report = ErrorReport::new(parts.code, parts.message, funcname);
        if let Some(d) = parts.detail {
            report = report.set_detail(d);
        }
        if let Some(h) = parts.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

/// The SQLSTATE the writer refuses `violation` with.
pub const fn refusal_code(violation: Violation) -> Code {
    match violation {
        Violation::MissingRunCreated | Violation::MissingCreation => {
            Code::ERRCODE_FOREIGN_KEY_VIOLATION
        }
        Violation::DuplicateCreation => Code::ERRCODE_UNIQUE_VIOLATION,
        Violation::EventAfterTerminal { .. }
        | Violation::EventAfterRunTerminal { .. }
        | Violation::IllegalTransition { .. } => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    }
}

/// The SQLSTATE of a refusal known only by its DETAIL (`anomaly: <code>;
/// run state: <state>`), for a copy of the error that lost its code on the
/// way (Citus re-raises a shard's COPY error as XX000). None: not a
/// refusal's DETAIL.
pub fn refusal_code_of_detail(detail: &str) -> Option<Code> {
    let (anomaly, rest) = detail.strip_prefix("anomaly: ")?.split_once("; ")?;
    rest.strip_prefix("run state: ")?;
    Violation::from_code(anomaly).map(refusal_code)
}

/// A refused event's report. Its DETAIL is the API contract of the module
/// doc: `anomaly: <code>; run state: <state>`.
fn refusal(
    violation: Violation,
    run_id: &str,
    correlation_id: Option<&str>,
    event: EventType,
    run_state: Option<State>,
) -> Report {
    let kind = event.entity_kind(correlation_id.is_some());
    let violation = violation.for_address(event, correlation_id.is_some());
    let target = match correlation_id {
        Some(c) if kind != EntityKind::Run => {
            format!("{kind} \"{}\" of run \"{}\"", clip(c), clip(run_id))
        }
        _ => format!("run \"{}\"", clip(run_id)),
    };
    let code = refusal_code(violation);
    let (message, hint) = match violation {
        Violation::MissingRunCreated => (
            format!(
                "{event} refused: run \"{}\" has no run_created event",
                clip(run_id)
            ),
            Some("Append run_created for the run first."),
        ),
        Violation::MissingCreation => (
            format!("{event} refused: {target} was never created (no {kind}_created event)"),
            None,
        ),
        Violation::DuplicateCreation => (
            format!("{event} refused: {target} already exists"),
            Some("append_suspension_event returns the existing event instead of failing."),
        ),
        Violation::EventAfterTerminal { state } => (
            format!("{event} refused: {target} is already {state}"),
            None,
        ),
        Violation::EventAfterRunTerminal { run_state } => (
            format!("{event} refused for {target}: the run is already {run_state}"),
            None,
        ),
        Violation::IllegalTransition { state } => {
            (format!("{event} refused: {target} is {state}"), None)
        }
    };
    Report {
        code,
        message,
        detail: Some(format!(
            "anomaly: {}; run state: {}",
            violation.code(),
            run_state.map_or("none", State::as_str)
        )),
        hint,
    }
}

/// A bug in workflow_ext, not a user error: XX000 with a message that says
/// so. Use [`internal!`].
#[track_caller]
pub fn internal_in(what: String, funcname: &'static str) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("workflow_ext internal error: {what}"),
        funcname,
    )
    .set_hint("This is a bug in workflow_ext; please report it.")
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR-level reports do not return")
}

/// The enclosing function's path, without closure suffixes, for LOCATION.
macro_rules! function_name {
    () => {{
        fn f() {}
        fn name_of<T>(_: T) -> &'static str {
            ::core::any::type_name::<T>()
        }
        $crate::errors::trim_function_name(name_of(f))
    }};
}
pub(crate) use function_name;

/// `a::b::{{closure}}::{{closure}}::f` → `a::b`.
pub fn trim_function_name(name: &'static str) -> &'static str {
    let mut name = name.strip_suffix("::f").unwrap_or(name);
    while let Some(outer) = name.strip_suffix("::{{closure}}") {
        name = outer;
    }
    name
}

/// Raises a [`WfError`] at this line: `raise!(WfError::NegativeInterval)`.
macro_rules! raise {
    ($e:expr) => {
        $crate::errors::WfError::raise_in($e, $crate::errors::function_name!())
    };
}
pub(crate) use raise;

/// The value of a [`WfResult`], or its error raised at this line.
macro_rules! or_raise {
    ($r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => $crate::errors::raise!(e),
        }
    };
}
pub(crate) use or_raise;

/// Raises an internal error (XX000) at this line: `internal!("what: {x}")`.
macro_rules! internal {
    ($($arg:tt)*) => {
        $crate::errors::internal_in(format!($($arg)*), $crate::errors::function_name!())
    };
}
pub(crate) use internal;

/// The `Ok` value, or an internal error naming `what` and the cause:
/// `or_internal!(client.update(..), "lock run")`. Only for statements of our
/// own that cannot fail unless the extension is broken.
macro_rules! or_internal {
    ($r:expr, $($what:tt)*) => {
        match $r {
            Ok(v) => v,
            Err(e) => $crate::errors::internal!("{}: {}", format!($($what)*), e),
        }
    };
}
pub(crate) use or_internal;

/// Keeps messages short when an identifier is huge (the error for a 10 MB
/// id should not itself be 10 MB).
pub fn clip(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return s.to_string();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Result` alias for code that raises at the SQL boundary.
pub type WfResult<T> = Result<T, WfError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_lose_closure_suffixes() {
        assert_eq!(
            trim_function_name("workflow_ext::append::admit::f"),
            "workflow_ext::append::admit"
        );
        assert_eq!(
            trim_function_name("workflow_ext::replay::scan::{{closure}}::{{closure}}::f"),
            "workflow_ext::replay::scan"
        );
    }

    /// PostgreSQL's style: a primary message starts lower case, has no
    /// trailing period and names no function; DETAIL and HINT are sentences.
    #[test]
    fn messages_follow_postgres_style() {
        let samples = vec![
            WfError::NullArgument { arg: "run_id" },
            WfError::TooLong {
                arg: "run_id",
                len: 300,
            },
            WfError::NotSuspension {
                event: EventType::StepCompleted,
            },
            WfError::PayloadTooLarge {
                bytes: 10,
                limit: 5,
            },
            WfError::BatchTooLarge {
                events: 11,
                limit: 10,
            },
            WfError::SeqMismatch { given: 7, next: 3 },
            WfError::AppendOnly {
                op: "update",
                table: "workflow_ext.events".into(),
            },
            WfError::JoinExpectedMismatch {
                join_key: "j".into(),
                expected: 4,
                recorded: 3,
            },
            WfError::BootstrapTransactionControl {
                name: "m@v1".into(),
            },
            WfError::BootstrapWaitTimedOut {
                name: "m".into(),
                which: "lock_timeout",
            },
            WfError::SourceMissingColumns {
                source: "t".into(),
                missing: vec!["id"],
            },
        ];
        for e in samples {
            let m = e.message();
            assert!(!m.ends_with('.'), "{m}");
            assert!(m.chars().next().is_some_and(|c| !c.is_uppercase()), "{m}");
            for f in [
                "append_event",
                "append_suspension_event",
                "bootstrap(",
                "replay(",
                "scan(",
            ] {
                assert!(!m.contains(f), "{m}");
            }
            for s in e.detail().into_iter().chain(e.hint().map(str::to_string)) {
                assert!(
                    s.ends_with('.') && s.chars().next().is_some_and(char::is_uppercase),
                    "{s}"
                );
            }
        }
    }
}
