//! The worker's circuit breaker: quarantine after N worker-side failures
//! in a row, so one broken node (a full disk, a broken FFmpeg, cgroups
//! gone bad) cannot burn through the whole queue.
//!
//! Properties (tested below):
//! - It opens only when the last `threshold` finished jobs all failed for a
//!   worker-side reason. Bad input, resource limits the job asked for,
//!   timeouts and cancellations say nothing about the worker and break the
//!   run without counting.
//! - While open it reports the reasons and the time it closes.
//! - After the cool-down it is half-open: one more worker-side failure opens
//!   it again at once; one success closes it fully.

use std::time::{Duration, Instant};

use ffleet_core::state::{Failure, FailureKind};

/// Whether a failure is the worker's fault rather than the job's. A
/// drain hands a job back on purpose, so it does not count.
pub fn blames_worker(failure: &Failure) -> bool {
    failure.kind == FailureKind::Infrastructure && failure.code != "worker_draining"
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// Worker-side failures in a row, with their codes.
    streak: Vec<String>,
    open_until: Option<Instant>,
}

impl Breaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown,
            streak: vec![],
            open_until: None,
        }
    }

    /// Records a finished job (`None`: it succeeded). Returns true when this
    /// outcome opens the breaker.
    pub fn record(&mut self, failure: Option<&Failure>, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        match failure {
            Some(f) if blames_worker(f) => self.streak.push(f.code.clone()),
            // Says nothing about the worker: the streak is broken, but a
            // half-open breaker stays half-open.
            Some(_) => {
                if self.open_until.is_none() {
                    self.streak.clear();
                }
                return false;
            }
            None => {
                self.streak.clear();
                self.open_until = None;
                return false;
            }
        }
        let half_open = self.open_until.is_some_and(|until| now >= until);
        if self.streak.len() >= self.threshold as usize || half_open {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    /// When it closes, if it is open now.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        self.open_until.filter(|until| now < *until)
    }

    /// Why it opened: the codes of the failures in a row.
    pub fn reason(&self) -> String {
        let shown: Vec<&str> = self
            .streak
            .iter()
            .rev()
            .take(self.threshold.max(1) as usize)
            .rev()
            .map(String::as_str)
            .collect();
        format!(
            "quarantined: the last {} jobs failed for worker-side reasons ({})",
            self.streak.len(),
            shown.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(kind: FailureKind, code: &str) -> Failure {
        Failure {
            kind,
            code: code.into(),
            reason: String::new(),
            stderr_tail: vec![],
        }
    }

    #[test]
    fn opens_after_threshold_worker_side_failures_in_a_row() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(60));
        let disk = fail(FailureKind::Infrastructure, "disk_full");
        assert!(!b.record(Some(&disk), t0));
        assert!(!b.record(Some(&disk), t0));
        assert_eq!(b.open_until(t0), None);
        assert!(b.record(Some(&disk), t0));
        assert_eq!(b.open_until(t0), Some(t0 + Duration::from_secs(60)));
        assert!(b.reason().contains("disk_full, disk_full, disk_full"));
        assert_eq!(b.open_until(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn job_side_failures_and_successes_break_the_streak() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(60));
        let infra = fail(FailureKind::Infrastructure, "killed_by_signal");
        for other in [
            Some(fail(FailureKind::Input, "ffmpeg_failed")),
            Some(fail(FailureKind::ResourceLimit, "oom_killed")),
            Some(fail(FailureKind::Timeout, "timed_out")),
            Some(fail(FailureKind::Cancelled, "cancelled_graceful")),
            Some(fail(FailureKind::Infrastructure, "worker_draining")),
            None,
        ] {
            assert!(!b.record(Some(&infra), t0));
            assert!(!b.record(other.as_ref(), t0), "{other:?}");
            assert!(
                !b.record(Some(&infra), t0),
                "streak not broken by {other:?}"
            );
            b.record(None, t0);
        }
    }

    #[test]
    fn half_open_after_the_cooldown() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut b = Breaker::new(2, cooldown);
        let infra = fail(FailureKind::Infrastructure, "spawn_failed");
        b.record(Some(&infra), t0);
        assert!(b.record(Some(&infra), t0));
        let later = t0 + cooldown;
        assert_eq!(b.open_until(later), None, "closed after the cool-down");
        assert!(b.record(Some(&infra), later), "one more failure reopens");
        let much_later = later + cooldown;
        assert!(!b.record(None, much_later));
        assert!(!b.record(Some(&infra), much_later), "a success closed it");
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(10));
        let infra = fail(FailureKind::Infrastructure, "spawn_failed");
        for _ in 0..10 {
            assert!(!b.record(Some(&infra), t0));
        }
        assert_eq!(b.open_until(t0), None);
    }
}
