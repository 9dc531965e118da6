//! The `/metrics` endpoint every ffleet daemon serves on its own HTTP
//! listener (`--metrics-listen`), apart from gRPC, in Prometheus's text
//! format.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs before each scrape: gauges that are read, not counted (job counts
/// from the database, free disk, zombies), are refreshed here.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A refresh that does nothing.
pub fn no_refresh() -> Refresh {
    Arc::new(|| Box::pin(async {}))
}

#[derive(Clone)]
struct Endpoint {
    registry: Registry,
    refresh: Refresh,
}

/// A registry with the process collector (RSS, CPU, open fds) registered.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        registry
            .register(Box::new(process))
            .expect("the process collector registers once");
    }
    registry
}

/// The `--metrics-listen` flag's address, `None` for `off`.
pub fn listen_addr(flag: String) -> Option<String> {
    (flag != "off").then_some(flag)
}

/// Binds the metrics listener; an error names the address.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("binding the metrics listener {addr}: {e}"),
        )
    })
}

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    refresh: Refresh,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "metrics serving");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Endpoint { registry, refresh });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn scrape(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (endpoint.refresh)().await;
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&endpoint.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            e.to_string().into_bytes(),
        ),
    }
}
