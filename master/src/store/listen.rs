//! LISTEN for what other masters sharing the Postgres database changed,
//! so a long poll on this master wakes when a job is submitted to another.

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Change;
use super::sql::{JOB_CHANNEL, WORK_CHANNEL};
use crate::error::Result;

pub async fn postgres(
    url: &str,
    sink: mpsc::UnboundedSender<Change>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([WORK_CHANNEL, JOB_CHANNEL]).await?;
    tracing::info!("listening for changes from other masters");
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = listener.try_recv() => received,
        };
        let change = match received {
            Ok(Some(n)) if n.channel() == WORK_CHANNEL => Change::WorkAvailable,
            Ok(Some(n)) => Change::Job(n.payload().to_owned()),
            // The connection dropped and was re-established: notifications
            // in between are lost, so assume everything changed.
            Ok(None) => {
                tracing::warn!("change listener reconnected; resynchronizing");
                Change::Everything
            }
            Err(e) => {
                tracing::warn!(error = %e, "change listener failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                Change::Everything
            }
        };
        if sink.send(change).is_err() {
            return Ok(());
        }
    }
}
