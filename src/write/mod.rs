//! The write path: every row that reaches a protected log, by any route,
//! passes the same lock-and-decide core.
//! - [`core`]: lock the run, decide by the rules, refuse or number.
//! - [`trigger`]: the events trigger, which applies the core to every
//!   INSERT and COPY into a protected log.
//! - [`append`]: `append_suspension_event`, the idempotent append.
//! - [`batch`]: `append_suspension_events`, a suspension's creations in one
//!   call, its run locked once.
//! - [`run_cache`]: the runs this transaction has locked, kept in memory
//!   and written back once before commit.
//! - [`skipped`]: the rows an `INSERT … ON CONFLICT` skips after the
//!   trigger numbered them, given back their seq.
//! - [`creation_probe`]: a stored creation found straight in the creation
//!   index, for duplicate calls.

pub mod append;
pub mod batch;
pub mod core;
pub mod creation_probe;
pub mod run_cache;
pub mod skipped;
pub mod trigger;
