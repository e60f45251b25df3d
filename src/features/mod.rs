//! The SQL features above the write path, one file each.
//! - [`attach`]: protecting an existing table in place (`sql/attach.sql`).
//! - [`fanin`]: the exactly-once join barrier.
//! - [`retention`]: removing whole finished runs; the append-only trigger.
//! - [`metrics`]: what `metrics()` /
//!   `stuck_runs()` (`sql/monitoring.sql`) need.
//! - [`bootstrap`]: run a migration once per database, race-free.

pub mod attach;
pub mod bootstrap;
pub mod fanin;
pub mod metrics;
pub mod retention;
