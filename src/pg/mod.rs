//! The backend: unsafe FFI and PostgreSQL plumbing the layers above share.
//! - [`counters`]: the write path's counters, in shared memory.
//! - [`payload`]: the jsonb payload, checked without conversion.
//! - [`log_shape`]: the columns a log or source must have, and their types,
//!   read from the tuple descriptor.
//! - [`log_scan`]: a log read straight from an index (replay, the probes).
//! - [`owner`]: work done as a table's owner, under a security-restricted
//!   operation.
//! - [`plans`]: SPI plans kept for the life of the backend.
//! - [`subxact`]: work in a subtransaction, its error caught; the
//!   transaction's isolation and read-only checks.

pub mod counters;
pub mod log_scan;
pub mod log_shape;
pub mod owner;
pub mod payload;
pub mod plans;
pub mod subxact;
