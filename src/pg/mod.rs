//! The backend: unsafe FFI and PostgreSQL plumbing the layers above share.
//! - [`citus`]: where a shard of a distributed log keeps its run rows.
//! - [`counters`]: the write path's counters, in shared memory.
//! - [`payload`]: the jsonb payload, checked without conversion.
//! - [`log_shape`]: the columns a log or source must have, and their types,
//!   read from the tuple descriptor.
//! - [`index_scan`]: index scans driven from Rust (keys, privileges).
//! - [`log_scan`]: the own log read straight from its primary key (replay).
//! - [`owner`]: work done as a table's owner, under a security-restricted
//!   operation.
//! - [`row_origin`]: which statement a trigger's row comes from: a `COPY …
//!   FROM` itself, or an `INSERT … ON CONFLICT` that may still skip it.
//! - [`plans`]: SPI plans kept for the life of the backend.
//! - [`transaction`]: work in a subtransaction, its error caught; the
//!   transaction's isolation and read-only checks.

pub mod background;
pub mod citus;
pub mod counters;
pub mod index_scan;
pub mod log_scan;
pub mod log_shape;
pub mod owner;
pub mod payload;
pub mod plans;
pub mod row_origin;
pub mod transaction;
