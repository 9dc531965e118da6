//! The pure heart of ffleet. Nothing in this crate performs I/O, reads the
//! clock or spawns tasks: callers pass `now` in and carry out the returned
//! actions. Master and worker are thin shells around it.

pub mod ffmpeg;
pub mod placement;
pub mod report;
pub mod resources;
pub mod spec;
pub mod state;

pub use resources::Resources;
pub use spec::{JobSpec, Preset};
pub use state::{FailureKind, JobState};
