//! The progress display: one bar per phase on stderr (hidden when stderr
//! is not a terminal, as in CI, where a line per phase is printed instead).

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Bar {
    current: Arc<Mutex<Option<ProgressBar>>>,
}

impl Bar {
    pub fn start(&self, phase: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:40} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_owned());
        if bar.is_hidden() {
            eprintln!("-- {phase}");
        }
        *self.current.lock().expect("bar lock") = Some(bar);
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &*self.current.lock().expect("bar lock") {
            bar.inc(n);
        }
    }

    pub fn set(&self, pos: u64) {
        if let Some(bar) = &*self.current.lock().expect("bar lock") {
            bar.set_position(pos);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.current.lock().expect("bar lock").take() {
            bar.finish();
        }
    }
}
