//! The rules, pure Rust with no SPI: what the writer accepts and what the
//! audit reports are both decided here, so they cannot disagree.
//! - [`lifecycle`]: event types, entity kinds, the state machine.
//! - [`validate`]: argument rules shared by every entry point.
//! - [`fold`]: one fold of a run's events into its state (the auditor,
//!   attach's seeding and the monitoring views all use it).
//! - [`event_id`]: `wevt_` + monotonic ULID ids.

pub mod event_id;
pub mod fold;
pub mod lifecycle;
pub mod validate;
