//! `MasterOptions -> build() -> run(shutdown)`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ffleet_core::spec::SpecPolicy;
use ffleet_core::state::RetryPolicy;
use ffleet_proto::v1::{
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::Result;
use crate::store::{self, DbOptions};

#[derive(Debug, Clone)]
pub struct MasterOptions {
    pub listen: SocketAddr,
    pub database: DbOptions,
    /// Apply pending migrations at start (else refuse to run behind them).
    pub migrate: bool,
    pub output_root: PathBuf,
    pub input_roots: Vec<PathBuf>,
    pub lease_ttl: Duration,
    pub retry_backoff: Duration,
    pub max_attempts: u32,
    pub default_timeout: Duration,
}

impl MasterOptions {
    /// Opens the database (migrating it), binds the listener.
    pub async fn build(self, shutdown: CancellationToken) -> Result<Master> {
        let output_root = std::path::absolute(&self.output_root)?;
        let input_roots = self
            .input_roots
            .iter()
            .map(std::path::absolute)
            .collect::<std::io::Result<Vec<_>>>()?;
        let store = store::open(&self.database, self.migrate).await?;
        let mut policy = SpecPolicy::new(output_root);
        policy.input_roots = input_roots;
        policy.default_max_attempts = self.max_attempts;
        policy.default_timeout_ms = self.default_timeout.as_millis() as u64;
        let config = ClusterConfig {
            policy,
            lease_ttl: self.lease_ttl,
            retry: RetryPolicy {
                base_ms: self.retry_backoff.as_millis() as i64,
                ..RetryPolicy::default()
            },
        };
        let listener = TcpListener::bind(self.listen).await?;
        Ok(Master {
            cluster: Cluster::new(store, config, shutdown.clone()),
            listener,
            shutdown,
        })
    }
}

pub struct Master {
    cluster: Cluster,
    listener: TcpListener,
    shutdown: CancellationToken,
}

impl Master {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn cluster(&self) -> Cluster {
        self.cluster.clone()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) -> Result<()> {
        let addr = self.local_addr();
        let reaper = tokio::spawn(self.cluster.clone().run_reaper());
        let listener = tokio::spawn(self.cluster.clone().follow_other_masters());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        tracing::info!(%addr, "master serving");
        let served = tonic::transport::Server::builder()
            .add_service(JobServiceServer::new(self.cluster.clone()))
            .add_service(WorkerServiceServer::new(self.cluster.clone()))
            .serve_with_incoming_shutdown(incoming, self.shutdown.clone().cancelled_owned())
            .await;
        self.shutdown.cancel();
        let _ = reaper.await;
        let _ = listener.await;
        served.map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!("master stopped");
        Ok(())
    }
}
