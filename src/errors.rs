//! Every error a caller can cause, and the SQLSTATE it is raised with.
//!
//! Nothing else in the crate calls `ereport` for a user error: the other
//! modules build a [`WfError`] and call [`WfError::raise`], so the README's
//! SQLSTATE table can be checked against this one file.

use crate::lifecycle::{EventType, State, Violation};
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
    /// A raw INSERT that names a seq other than the next one. 22023.
    SeqMismatch { given: i64, next: i64 },
    /// The lifecycle forbids the event. 23503 (missing run / entity) or 55000.
    Refused {
        violation: Violation,
        run_id: String,
        correlation_id: Option<String>,
        event: EventType,
        run_state: Option<State>,
    },
    /// UPDATE / DELETE / TRUNCATE of the append-only log. 0A000.
    AppendOnly { op: &'static str },
    /// A join called with an `expected` other than the join's. 22023.
    JoinExpectedMismatch { join_key: String, expected: i32, recorded: i32 },
    /// `expected` below 1. 22023.
    JoinExpectedInvalid { expected: i32 },
    /// A new member arriving at a join that already fired. 55000.
    JoinAlreadyComplete { join_key: String, member_key: String, expected: i32 },
    /// `purge_runs` with a negative interval. 22023.
    NegativeInterval,
    /// `bootstrap` with a name already applied with another DDL. 55000.
    BootstrapDdlChanged { name: String, applied: String, given: String },
    /// `replay`/`scan` source that is not a relation. 42P01.
    SourceNotFound { oid: u32 },
    /// `replay`/`scan` source that is an index, sequence, …. 42809.
    SourceNotATable { source: String },
    /// `replay`/`scan` source without the needed columns. 42703.
    SourceMissingColumns { source: String, missing: Vec<&'static str> },
    /// `bootstrap` gave up waiting for another session's bootstrap. 55P03 / 57014.
    BootstrapWaitTimedOut { name: String, which: String },
}

impl WfError {
    pub fn sqlstate(&self) -> Code {
        match self {
            WfError::NullArgument { .. } | WfError::CorrelationRequired { .. } => {
                Code::ERRCODE_NULL_VALUE_NOT_ALLOWED
            }
            WfError::TooLong { .. } => Code::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
            WfError::PayloadTooLarge { .. } => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            WfError::AppendOnly { .. } => Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            WfError::Refused { violation, .. } => match violation {
                Violation::MissingRunCreated | Violation::MissingCreation => {
                    Code::ERRCODE_FOREIGN_KEY_VIOLATION
                }
                Violation::DuplicateCreation => Code::ERRCODE_UNIQUE_VIOLATION,
                _ => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            },
            WfError::JoinAlreadyComplete { .. } | WfError::BootstrapDdlChanged { .. } => {
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            WfError::BootstrapWaitTimedOut { which, .. } if which == "lock_timeout" => {
                Code::ERRCODE_LOCK_NOT_AVAILABLE
            }
            WfError::BootstrapWaitTimedOut { .. } => Code::ERRCODE_QUERY_CANCELED,
            WfError::SourceNotFound { .. } => Code::ERRCODE_UNDEFINED_TABLE,
            WfError::SourceNotATable { .. } => Code::ERRCODE_WRONG_OBJECT_TYPE,
            WfError::SourceMissingColumns { .. } => Code::ERRCODE_UNDEFINED_COLUMN,
            WfError::EmptyArgument { .. }
            | WfError::UnknownEventType { .. }
            | WfError::NotSuspension { .. }
            | WfError::CorrelationForbidden { .. }
            | WfError::PayloadNotObject
            | WfError::SeqMismatch { .. }
            | WfError::JoinExpectedMismatch { .. }
            | WfError::JoinExpectedInvalid { .. }
            | WfError::NegativeInterval => Code::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            WfError::NullArgument { arg } => format!("{arg} must not be NULL"),
            WfError::EmptyArgument { arg } => format!("{arg} must not be empty"),
            WfError::TooLong { arg, len } => {
                format!("{arg} is {len} bytes long; at most {MAX_IDENT_BYTES} are allowed")
            }
            WfError::UnknownEventType { given } => {
                format!("unknown event type \"{}\"", clip(given))
            }
            WfError::NotSuspension { event } => format!(
                "\"{event}\" is not a suspension event type; append_suspension_event takes \
                 run_created, step_created, wait_created or hook_created"
            ),
            WfError::CorrelationRequired { event } => {
                format!("correlation_id must not be NULL for a {event} event")
            }
            WfError::CorrelationForbidden { event } => {
                format!("correlation_id must be NULL for a {event} event")
            }
            WfError::PayloadNotObject => "payload must be a JSON object (or NULL)".into(),
            WfError::PayloadTooLarge { bytes, limit } => {
                format!("payload is {bytes} bytes; workflow_ext.max_payload_bytes is {limit}")
            }
            WfError::SeqMismatch { given, next } => format!(
                "seq is assigned by workflow_ext: the next seq of this run is {next}, not {given}"
            ),
            WfError::Refused { violation, run_id, correlation_id, event, .. } => {
                let target = match correlation_id {
                    Some(c) => format!("{} \"{}\" of run \"{}\"", event.kind(), clip(c), clip(run_id)),
                    None => format!("run \"{}\"", clip(run_id)),
                };
                match violation {
                    Violation::MissingRunCreated => {
                        format!("{event} refused: run \"{}\" has no run_created event", clip(run_id))
                    }
                    Violation::MissingCreation => format!(
                        "{event} refused: {target} was never created (no {}_created event)",
                        event.kind()
                    ),
                    Violation::DuplicateCreation => {
                        format!("{event} refused: {target} already exists")
                    }
                    Violation::EventAfterTerminal { state } => {
                        format!("{event} refused: {target} is already {state}")
                    }
                    Violation::EventAfterRunTerminal { run_state } => format!(
                        "{event} refused for {target}: the run is already {run_state}"
                    ),
                    Violation::IllegalTransition { state } => {
                        format!("{event} refused: {target} is {state}")
                    }
                }
            }
            WfError::AppendOnly { op } => {
                format!("workflow_ext.events is append-only: {op} is not allowed")
            }
            WfError::JoinExpectedMismatch { join_key, expected, recorded } => format!(
                "join \"{}\" expects {recorded} members, but this call says {expected}",
                clip(join_key)
            ),
            WfError::JoinExpectedInvalid { expected } => {
                format!("expected must be at least 1, got {expected}")
            }
            WfError::JoinAlreadyComplete { join_key, member_key, expected } => format!(
                "join \"{}\" already fired with its {expected} members; member \"{}\" is one too many",
                clip(join_key),
                clip(member_key)
            ),
            WfError::NegativeInterval => "older_than must not be negative".into(),
            WfError::SourceNotFound { oid } => format!("source relation with OID {oid} does not exist"),
            WfError::SourceNotATable { source } => {
                format!("source {source} is not a table, view or materialized view")
            }
            WfError::SourceMissingColumns { source, missing } => format!(
                "source {source} lacks column(s) {}; an event source needs id, run_id, type and correlation_id",
                missing.join(", ")
            ),
            WfError::BootstrapDdlChanged { name, .. } => {
                format!("bootstrap \"{}\" was applied with another DDL", clip(name))
            }
            WfError::BootstrapWaitTimedOut { name, which } => format!(
                "bootstrap \"{}\": gave up waiting for another session's bootstrap ({which})",
                clip(name)
            ),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            WfError::Refused { violation, run_state, .. } => Some(format!(
                "anomaly: {}; run state: {}",
                violation.code(),
                run_state.map_or("none", State::as_str)
            )),
            WfError::BootstrapDdlChanged { applied, given, .. } => Some(format!(
                "applied checksum {applied}, this call's {given}"
            )),
            _ => None,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            WfError::Refused { violation: Violation::MissingRunCreated, .. } => {
                Some("Append run_created for the run first.")
            }
            WfError::Refused { violation: Violation::DuplicateCreation, .. } => {
                Some("append_suspension_event returns the existing event instead of failing.")
            }
            WfError::NotSuspension { .. } => Some("Use append_event for other event types."),
            WfError::BootstrapDdlChanged { .. } => {
                Some("Bootstraps are versioned by name: give a changed DDL a new name, e.g. app@v2.")
            }
            WfError::AppendOnly { .. } => {
                Some("Remove whole finished runs with workflow_ext.purge_runs(interval).")
            }
            _ => None,
        }
    }

    /// Raises the error as a PostgreSQL ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.message(), "workflow_ext");
        if let Some(d) = self.detail() {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

/// Keeps messages short when an identifier is huge (the error for a 10 MB
/// id should not itself be 10 MB).
fn clip(s: &str) -> String {
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

/// Unwraps a [`WfResult`] or raises its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for WfResult<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}
