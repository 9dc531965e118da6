//! Everything that differs between the SQLite and Postgres backends, in one
//! place. Queries are written once (with `$N` placeholders, which both
//! accept); they splice in these fragments where the dialects part.

use std::time::Duration;

use sqlx::migrate::Migrator;

use crate::error::{Error, Result};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of(url: &str) -> Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Dialect::Postgres)
        } else {
            Err(Error::UnsupportedDatabase(url.to_owned()))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    pub fn migrator(self) -> &'static Migrator {
        match self {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Locks the rows a transaction reads for update. SQLite needs none:
    /// its one writer connection serializes write transactions.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Locks the candidate rows of a lease, skipping rows another master
    /// is leasing at the same moment, so concurrent masters never contend
    /// for (or double-lease) a job.
    pub fn for_update_skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// How write transactions begin. SQLite's default (deferred) takes the
    /// write lock only at the first write, and a transaction that read
    /// first then fails with SQLITE_BUSY if another process wrote
    /// meanwhile; IMMEDIATE takes it up front and waits its turn.
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// The `i`th (from 1) placeholder of a generated statement whose
    /// placeholders are bound in order. SQLite gets anonymous `?`: it
    /// resolves a named `$N` by scanning every name before it, which makes
    /// a 2,000-value batch statement quadratic to prepare and bind.
    pub fn placeholder(self, i: usize) -> String {
        match self {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${i}"),
        }
    }

    /// The larger of two values.
    pub fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }

    /// SQLite URLs get `mode=rwc` so a missing database file is created.
    pub fn connect_url(self, url: &str) -> String {
        match self {
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        }
    }

    /// Statements run on each new connection.
    pub fn session_setup(self) -> &'static [&'static str] {
        match self {
            Dialect::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA foreign_keys = ON",
            ],
            Dialect::Postgres => &[],
        }
    }

    /// Whether other processes can share the database (and so need to be
    /// told about changes).
    pub fn is_shared(self) -> bool {
        self == Dialect::Postgres
    }
}

/// Pool settings, from the master's flags.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub url: String,
    /// Postgres: the pool size. SQLite: readers (writes use one connection).
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
}

impl DbOptions {
    pub fn new(url: impl Into<String>) -> Self {
        DbOptions {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
        }
    }
}
