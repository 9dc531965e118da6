//! The ffleet wire contract, generated from `proto/ffleet/v1/ffleet.proto`,
//! and the one place where wire types and core types convert into each other.

pub mod convert;

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("ffleet.v1");
}
