pub mod efficiency;
pub mod latency;
pub mod scale;
pub mod soak;
pub mod throughput;
