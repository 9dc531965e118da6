//! The reservation ledger: what each running job holds of the worker's
//! capacity. The worker never accepts work beyond what is free here.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ffleet_core::Resources;
use tokio::sync::Notify;

pub struct Ledger {
    capacity: Resources,
    reserved: Mutex<BTreeMap<String, Resources>>,
    released: Notify,
}

/// A reservation does not fit what is free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reservation of {request} for job {job_id} does not fit the free {free}")]
pub struct DoesNotFit {
    pub job_id: String,
    pub request: Resources,
    pub free: Resources,
}

impl Ledger {
    pub fn new(capacity: Resources) -> Self {
        Ledger {
            capacity,
            reserved: Mutex::new(BTreeMap::new()),
            released: Notify::new(),
        }
    }

    pub fn capacity(&self) -> Resources {
        self.capacity
    }

    pub fn free(&self) -> Resources {
        let reserved = self.reserved.lock().expect("ledger lock");
        let used = reserved
            .values()
            .fold(Resources::ZERO, |acc, r| acc.saturating_add(r));
        self.capacity.saturating_sub(&used)
    }

    pub fn reserve(&self, job_id: &str, request: Resources) -> Result<(), DoesNotFit> {
        let mut reserved = self.reserved.lock().expect("ledger lock");
        let used = reserved
            .values()
            .fold(Resources::ZERO, |acc, r| acc.saturating_add(r));
        let free = self.capacity.saturating_sub(&used);
        if reserved.contains_key(job_id) || !free.fits(&request) {
            return Err(DoesNotFit {
                job_id: job_id.to_owned(),
                request,
                free,
            });
        }
        reserved.insert(job_id.to_owned(), request);
        Ok(())
    }

    pub fn release(&self, job_id: &str) {
        let removed = self.reserved.lock().expect("ledger lock").remove(job_id);
        if removed.is_some() {
            self.released.notify_waiters();
        }
    }

    /// Resolves at the next release. Pin and `enable()` it before reading
    /// [`Ledger::free`], so a release in between is not missed.
    pub fn next_release(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reserves_beyond_capacity() {
        let ledger = Ledger::new(Resources::new(2000, 4 << 30, 10 << 30));
        let job = Resources::new(1500, 1 << 30, 1 << 30);
        ledger.reserve("a", job).unwrap();
        let err = ledger.reserve("b", job).unwrap_err();
        assert_eq!(err.free.cpu_millis, 500);
        ledger.release("a");
        ledger.reserve("b", job).unwrap();
        assert_eq!(ledger.free(), Resources::new(500, 3 << 30, 9 << 30));
        assert!(
            ledger.reserve("b", Resources::new(1, 1, 1)).is_err(),
            "one reservation per job"
        );
    }
}
