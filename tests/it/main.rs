//! End-to-end tests: one binary, real processes, real FFmpeg.

mod helpers;

mod cli;
mod faults;
mod http_input;
mod isolation;
mod lifecycle;
mod multi_master;
mod observability;
mod store_suite;
mod validation;
