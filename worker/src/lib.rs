//! The ffleet worker. See `docs/ARCHITECTURE.md` for the map.

pub mod breaker;
pub mod capacity;
pub mod cgroup;
pub mod error;
pub mod executor;
pub mod host;
pub mod ledger;
pub mod metrics;
pub mod worker;

pub use error::{Error, Result};
pub use worker::{Worker, WorkerOptions};
