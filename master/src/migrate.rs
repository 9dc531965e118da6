//! Schema migrations: `ffleet-master migrate status | up | down [--to N]`,
//! and the check the master runs at start. Each backend has its own
//! directory (`migrations/sqlite`, `migrations/postgres`) with the same
//! version numbers; every migration has an up and a down script.

use sqlx::AnyPool;
use sqlx::migrate::Migrate;

use crate::error::{Error, Result};
use crate::store::dialect::{DbOptions, Dialect};
use crate::store::sql::connect_pools;

/// One migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied by a newer ffleet-master: this build does not know it.
    Unknown,
}

impl MigrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Unknown => "unknown",
        }
    }
}

async fn pool(url: &str) -> Result<(Dialect, AnyPool)> {
    let mut options = DbOptions::new(url);
    options.max_connections = 1;
    let (dialect, writer, _) = connect_pools(&options).await?;
    Ok((dialect, writer))
}

async fn statuses(pool: &AnyPool, dialect: Dialect) -> Result<Vec<MigrationStatus>> {
    let mut conn = pool.acquire().await?;
    conn.ensure_migrations_table().await?;
    let applied = conn.list_applied_migrations().await?;
    let known = dialect.migrator();
    let mut rows: Vec<MigrationStatus> = known
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            state: if applied.iter().any(|a| a.version == m.version) {
                MigrationState::Applied
            } else {
                MigrationState::Pending
            },
        })
        .collect();
    for a in &applied {
        if !rows.iter().any(|r| r.version == a.version) {
            rows.push(MigrationStatus {
                version: a.version,
                description: "(not known to this build)".into(),
                state: MigrationState::Unknown,
            });
        }
    }
    rows.sort_by_key(|r| r.version);
    Ok(rows)
}

pub async fn status(url: &str) -> Result<Vec<MigrationStatus>> {
    let (dialect, pool) = pool(url).await?;
    statuses(&pool, dialect).await
}

/// Applies every pending migration; returns the versions applied.
pub async fn up(url: &str) -> Result<Vec<i64>> {
    let (dialect, pool) = pool(url).await?;
    refuse_unknown(&statuses(&pool, dialect).await?)?;
    let before = statuses(&pool, dialect).await?;
    dialect.migrator().run(&pool).await?;
    Ok(before
        .iter()
        .filter(|m| m.state == MigrationState::Pending)
        .map(|m| m.version)
        .collect())
}

/// Reverts applied migrations down to version `to` (exclusive: `to` stays
/// applied; 0 reverts everything), or the latest one when `to` is `None`.
/// Returns the versions reverted, newest first.
pub async fn down(url: &str, to: Option<i64>) -> Result<Vec<i64>> {
    let (dialect, pool) = pool(url).await?;
    let rows = statuses(&pool, dialect).await?;
    refuse_unknown(&rows)?;
    let mut applied: Vec<i64> = rows
        .iter()
        .filter(|m| m.state == MigrationState::Applied)
        .map(|m| m.version)
        .collect();
    applied.reverse();
    let target = match to {
        Some(t) => t,
        None => applied.get(1).copied().unwrap_or(0),
    };
    dialect.migrator().undo(&pool, target).await?;
    Ok(applied.into_iter().filter(|v| *v > target).collect())
}

fn refuse_unknown(rows: &[MigrationStatus]) -> Result<()> {
    if let Some(newest) = rows
        .iter()
        .rev()
        .find(|m| m.state == MigrationState::Unknown)
    {
        let known = rows
            .iter()
            .filter(|m| m.state != MigrationState::Unknown)
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        return Err(Error::SchemaTooNew {
            database: newest.version,
            known,
        });
    }
    Ok(())
}

/// At start: refuse a database ahead of this build; apply pending
/// migrations, or with `migrate == false` refuse to run behind them.
pub async fn check_and_apply(pool: &AnyPool, dialect: Dialect, migrate: bool) -> Result<()> {
    let rows = statuses(pool, dialect).await?;
    refuse_unknown(&rows)?;
    let pending: Vec<i64> = rows
        .iter()
        .filter(|m| m.state == MigrationState::Pending)
        .map(|m| m.version)
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    if !migrate {
        return Err(Error::SchemaBehind { pending });
    }
    dialect.migrator().run(pool).await?;
    tracing::info!(backend = dialect.name(), ?pending, "migrations applied");
    Ok(())
}
