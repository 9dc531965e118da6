//! The ffleet master: a gRPC server over a job store. See
//! `docs/ARCHITECTURE.md` for the map.

pub mod batch;
pub mod cluster;
pub mod error;
pub mod grpc;
pub mod master;
pub mod metrics;
pub mod migrate;
pub mod store;

pub use cluster::{Cluster, ClusterConfig};
pub use error::{Error, Result};
pub use master::{Master, MasterOptions};
