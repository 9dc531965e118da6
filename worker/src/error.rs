/// Everything that goes wrong in the worker outside a job's own run (a
/// job's failures are `ffleet_core::state::Failure`s, reported to the master).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("master: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("master address {0:?}: {1}")]
    MasterAddress(String, String),
    #[error("work dir {0}: {1}")]
    WorkDir(std::path::PathBuf, std::io::Error),
    #[error("cgroups required but unusable: {0}")]
    Cgroups(String),
    #[error("detecting capacity: {0}")]
    Capacity(String),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
