//! Reading a stored log back and judging it by the writer's rules.
//! - [`auditor`]: one run's events judged in order, pure Rust (on
//!   [`crate::rules::fold`]).
//! - [`source`]: what a source has (columns, types, order), inspected once.
//! - [`stream`]: rows read from a cursor in batches into one auditor per run.
//! - [`tokens`]: the hook-token rule across runs.
//! - [`replay`]: the SQL functions `replay` and `scan`.

pub mod auditor;
pub mod replay;
pub mod source;
pub mod stream;
pub mod tokens;
