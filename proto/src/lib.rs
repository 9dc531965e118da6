//! The ffleet wire contract. Everything here is generated from
//! `proto/ffleet/v1/ffleet.proto`; conversions to domain types live with the
//! crates that own those types.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("ffleet.v1");
}
