//! The ffleet wire contract, generated from `proto/ffleet/v1/ffleet.proto`,
//! and the one place where wire types and core types convert into each other.

pub mod convert;

/// A master's address as a URL: `127.0.0.1:7700` means
/// `http://127.0.0.1:7700`; a full URL is kept as given.
pub fn master_url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("ffleet.v1");
}
