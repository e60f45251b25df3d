//! What the tests of several modules share: a deterministic generator and
//! how a writer's refusal is named (compiled for tests only).

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// A tiny deterministic generator (xorshift), so that a property test's
/// failure reproduces by its seed.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In 0..n.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The anomaly code the writer gave for a refusal, as replay names it:
/// 23505 is the index's own duplicate error (or, naming
/// workflow_hook_token_unique, a token conflict); argument errors are what
/// the audit calls invalid.
pub(crate) fn writer_code(e: &CaughtError) -> String {
    let r = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    match r.sql_error_code() {
        // The token's 23505 names its constraint; the creation index's is
        // a duplicate creation.
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
            if r.message().contains("workflow_hook_token_unique") =>
        {
            "token_conflict".into()
        }
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
