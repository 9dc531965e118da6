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
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::store::{self, DbOptions, Metered};

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
    /// Where `/metrics` is served; `None`: nowhere.
    pub metrics_listen: Option<String>,
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
        let metrics = Metrics::new(ffleet_telemetry::metrics::registry());
        let store = store::open(&self.database, self.migrate).await?;
        let store = std::sync::Arc::new(Metered::new(store, metrics.clone()));
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
        let metrics_listener = match &self.metrics_listen {
            Some(addr) => Some(ffleet_telemetry::metrics::bind(addr).await?),
            None => None,
        };
        Ok(Master {
            cluster: Cluster::new(store, config, metrics, shutdown.clone()),
            listener,
            metrics_listener,
            shutdown,
        })
    }
}

pub struct Master {
    cluster: Cluster,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
}

impl Master {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn cluster(&self) -> Cluster {
        self.cluster.clone()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) -> Result<()> {
        let addr = self.local_addr();
        let reaper = tokio::spawn(self.cluster.clone().run_reaper());
        let listener = tokio::spawn(self.cluster.clone().follow_other_masters());
        let metrics = self.metrics_listener.map(|l| {
            let cluster = self.cluster.clone();
            let refresh: ffleet_telemetry::metrics::Refresh = std::sync::Arc::new(move || {
                let cluster = cluster.clone();
                Box::pin(async move { cluster.refresh_metrics().await })
            });
            tokio::spawn(ffleet_telemetry::metrics::serve(
                l,
                self.cluster.metrics().registry().clone(),
                refresh,
                self.shutdown.clone(),
            ))
        });
        // Small request/response messages: without TCP_NODELAY, Nagle's
        // algorithm meets the peer's delayed ACK and each exchange can stall
        // for 40 ms (measured: 88 ms submit-to-start on an idle worker).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(self.listener),
            |conn| {
                if let Ok(stream) = &conn {
                    let _ = stream.set_nodelay(true);
                }
                conn
            },
        );
        tracing::info!(%addr, "master serving");
        let served = tonic::transport::Server::builder()
            .layer(GrpcMetricsLayer::new(self.cluster.metrics().clone()))
            .add_service(JobServiceServer::new(self.cluster.clone()))
            .add_service(WorkerServiceServer::new(self.cluster.clone()))
            .serve_with_incoming_shutdown(incoming, self.shutdown.clone().cancelled_owned())
            .await;
        self.shutdown.cancel();
        let _ = reaper.await;
        let _ = listener.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served.map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!("master stopped");
        Ok(())
    }
}
