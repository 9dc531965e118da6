use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ffleet_master::MasterOptions;
use ffleet_master::store::DbOptions;
use ffleet_telemetry::LogFormat;

/// The ffleet master: stores jobs, leases them to workers, serves gRPC.
#[derive(Parser, Debug)]
#[command(name = "ffleet-master", version, args_override_self = true)]
struct Args {
    /// Address the gRPC server listens on.
    #[arg(long, env = "FFLEET_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Database URL: sqlite://PATH (created if missing) or
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(
        long,
        global = true,
        env = "FFLEET_DATABASE",
        default_value = "sqlite://ffleet.db"
    )]
    database: String,
    /// Do not apply pending migrations at start; refuse to run behind them.
    #[arg(long)]
    no_migrate: bool,
    /// Postgres: the connection pool's size. SQLite: reader connections.
    #[arg(long, default_value_t = 10)]
    db_max_connections: u32,
    /// How long a query waits for a free connection before failing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    db_acquire_timeout: Duration,
    /// Idle connections are closed after this.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    db_idle_timeout: Duration,
    /// Outputs must land inside this directory.
    #[arg(long, default_value = ".")]
    output_root: PathBuf,
    /// When given (repeatable), local inputs must lie inside one of these.
    #[arg(long = "input-root")]
    input_roots: Vec<PathBuf>,
    /// A worker silent this long is lost, and its leases are requeued.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// First retry delay after an infrastructure failure; doubles each time.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    /// Attempts for jobs that do not say.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Timeout for jobs that do not say.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    default_timeout: Duration,
    /// Address of the Prometheus `/metrics` listener (apart from gRPC);
    /// `off` disables it.
    #[arg(long, env = "FFLEET_METRICS_LISTEN", default_value = "127.0.0.1:7701")]
    metrics_listen: String,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect or apply the database's schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
}

#[derive(Subcommand, Debug)]
enum MigrateAction {
    /// List migrations and whether each is applied.
    Status,
    /// Apply pending migrations.
    Up,
    /// Revert the latest migration, or every one above --to.
    Down {
        /// Keep migrations up to this version (0 reverts all).
        #[arg(long)]
        to: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ffleet_telemetry::init(args.log_format, "ffleet-master");
    match args.command {
        Some(Command::Migrate { action }) => migrate(&args.database, action).await,
        None => serve(args).await,
    }
}

async fn migrate(database: &str, action: MigrateAction) -> anyhow::Result<()> {
    use ffleet_master::migrate;
    match action {
        MigrateAction::Status => {
            println!("{:<8} {:<8} description", "version", "state");
            for m in migrate::status(database).await? {
                println!("{:<8} {:<8} {}", m.version, m.state.as_str(), m.description);
            }
        }
        MigrateAction::Up => {
            let applied = migrate::up(database).await?;
            println!("applied: {applied:?}");
        }
        MigrateAction::Down { to } => {
            let reverted = migrate::down(database, to).await?;
            println!("reverted: {reverted:?}");
        }
    }
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let shutdown = ffleet_telemetry::shutdown_on_signals();
    let options = MasterOptions {
        listen: args.listen,
        database: DbOptions {
            url: args.database.clone(),
            max_connections: args.db_max_connections,
            acquire_timeout: args.db_acquire_timeout,
            idle_timeout: args.db_idle_timeout,
        },
        migrate: !args.no_migrate,
        output_root: args.output_root,
        input_roots: args.input_roots,
        lease_ttl: args.lease_ttl,
        retry_backoff: args.retry_backoff,
        max_attempts: args.max_attempts,
        default_timeout: args.default_timeout,
        metrics_listen: ffleet_telemetry::metrics::listen_addr(args.metrics_listen),
    };
    let master = options
        .build(shutdown)
        .await
        .with_context(|| format!("starting master on {}", args.database))?;
    // Scripts and tests read this line to learn the bound port.
    println!("ffleet-master listening on {}", master.local_addr());
    if let Some(addr) = master.metrics_addr() {
        println!("ffleet-master metrics on {addr}");
    }
    master.run().await?;
    Ok(())
}
