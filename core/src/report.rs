//! What workers report about running and finished jobs.

use serde::{Deserialize, Serialize};

/// A running job's latest progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub out_time_us: u64,
    pub fps: f64,
    pub speed: f64,
    pub total_size: u64,
    pub bitrate_bps: u64,
    /// The input's duration, 0 when unknown.
    pub duration_us: u64,
    pub frame: u64,
}

impl Progress {
    /// Percent done, when the input's duration is known.
    pub fn percent(&self) -> Option<f64> {
        (self.duration_us > 0)
            .then(|| (self.out_time_us as f64 / self.duration_us as f64 * 100.0).clamp(0.0, 100.0))
    }

    /// Seconds left at the current speed, when it can be told.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.duration_us == 0 || self.speed <= 0.0 {
            return None;
        }
        let left_us = self.duration_us.saturating_sub(self.out_time_us) as f64;
        Some(left_us / 1e6 / self.speed)
    }
}

/// What a job's processes used, from its cgroup's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What a finished job moved, measured by the worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub media_duration_us: u64,
    pub wall_time_ms: u64,
    /// Output bits per media second.
    pub avg_bitrate_bps: u64,
    /// Media seconds per wall second.
    pub speed: f64,
    pub read_bytes_per_sec: u64,
    pub write_bytes_per_sec: u64,
}

impl Bandwidth {
    /// Derives the rates from the measured totals.
    pub fn measure(
        input_bytes: u64,
        output_bytes: u64,
        media_duration_us: u64,
        wall_time_ms: u64,
    ) -> Self {
        let per_sec = |bytes: u64| {
            if wall_time_ms == 0 {
                0
            } else {
                (bytes as u128 * 1000 / wall_time_ms as u128) as u64
            }
        };
        Bandwidth {
            input_bytes,
            output_bytes,
            media_duration_us,
            wall_time_ms,
            avg_bitrate_bps: if media_duration_us == 0 {
                0
            } else {
                (output_bytes as u128 * 8 * 1_000_000 / media_duration_us as u128) as u64
            },
            speed: if wall_time_ms == 0 {
                0.0
            } else {
                media_duration_us as f64 / 1000.0 / wall_time_ms as f64
            },
            read_bytes_per_sec: per_sec(input_bytes),
            write_bytes_per_sec: per_sec(output_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_rates_follow_from_totals() {
        // 1 MB in, 500 kB out, 5 s of media in 2 s of wall time.
        let b = Bandwidth::measure(1_000_000, 500_000, 5_000_000, 2_000);
        assert_eq!(b.avg_bitrate_bps, 800_000);
        assert_eq!(b.speed, 2.5);
        assert_eq!(b.read_bytes_per_sec, 500_000);
        assert_eq!(b.write_bytes_per_sec, 250_000);
        assert_eq!(Bandwidth::measure(1, 1, 0, 0).avg_bitrate_bps, 0);
    }

    #[test]
    fn percent_and_eta() {
        let p = Progress {
            out_time_us: 2_500_000,
            duration_us: 10_000_000,
            speed: 2.5,
            ..Progress::default()
        };
        assert_eq!(p.percent(), Some(25.0));
        assert_eq!(p.eta_seconds(), Some(3.0));
        assert_eq!(Progress::default().percent(), None);
    }
}
