//! `ffleet-master migrate status | up`.

use sqlx::migrate::Migrate;

use crate::error::{Error, Result};
use crate::store::SqliteStore;
use crate::store::sqlite_migrator;

/// One migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

pub async fn status(url: &str) -> Result<Vec<MigrationStatus>> {
    let store = connect(url).await?;
    let mut conn = store.pool().acquire().await?;
    conn.ensure_migrations_table().await?;
    let applied = conn.list_applied_migrations().await?;
    Ok(sqlite_migrator()
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.iter().any(|a| a.version == m.version),
        })
        .collect())
}

pub async fn up(url: &str) -> Result<()> {
    let store = connect(url).await?;
    sqlite_migrator().run(store.pool()).await?;
    Ok(())
}

async fn connect(url: &str) -> Result<SqliteStore> {
    if !url.starts_with("sqlite:") {
        return Err(Error::UnsupportedDatabase(url.to_owned()));
    }
    SqliteStore::connect(url).await
}
