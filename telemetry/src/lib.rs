//! What every ffleet daemon sets up the same way: logs, traces, metrics
//! and shutdown.

pub mod metrics;
pub mod trace;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use trace::Telemetry;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info,sqlx=warn`), so
/// stdout stays free for what a program prints on purpose. Spans go to an
/// OpenTelemetry collector too when the standard `OTEL_EXPORTER_OTLP_*`
/// variables name one (see [`trace`]). Keep the returned guard alive: it
/// flushes the last spans when dropped.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let (otel, telemetry) = trace::layer(service);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    telemetry
}

/// A token cancelled on the first SIGINT or SIGTERM: the one shutdown signal
/// every long-running part of a daemon listens to.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutdown requested");
        trigger.cancel();
    });
    token
}
