use ffleet_core::spec::InvalidSpec;
use ffleet_core::state::StepError;

/// Everything that goes wrong in the master. Converted to a gRPC status in
/// exactly one place: `grpc::status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("worker {0} is not registered (or was declared lost); register again")]
    UnknownWorker(String),
    #[error("idempotency key {0:?} was already used for a different spec")]
    IdempotencyConflict(String),
    #[error("{0}")]
    Step(#[from] StepError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    UnsupportedDatabase(String),
    #[error(
        "the database schema is at version {database}, newer than this ffleet-master knows \
         (up to {known}); run a newer ffleet-master"
    )]
    SchemaTooNew { database: i64, known: i64 },
    #[error(
        "the database lacks migrations {pending:?} and --no-migrate was given; \
         run `ffleet-master migrate up`"
    )]
    SchemaBehind { pending: Vec<i64> },
    #[error("the master is shutting down")]
    ShuttingDown,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
