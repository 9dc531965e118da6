//! Placement: which queued jobs go to which workers. See
//! `core/src/placement.md` for the properties, checked by the property tests
//! below.

use crate::resources::Resources;

/// A queued job as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub priority: i32,
    pub created_at_ms: i64,
    /// Tie-breaker that makes the order total (the job id).
    pub id: String,
    pub request: Resources,
}

/// A worker's room for more work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub free: Resources,
    /// How many more jobs this worker takes in this round.
    pub max_jobs: usize,
}

/// `job` (an index into the queue) goes to `worker` (an index into the slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub job: usize,
    pub worker: usize,
}

/// The order jobs are considered in: higher priority first, then older, then
/// by id.
pub fn queue_order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.created_at_ms.cmp(&b.created_at_ms))
        .then_with(|| a.id.cmp(&b.id))
}

/// Greedy placement: jobs in queue order, each to the worker with the most
/// free CPU that fits it (spreading load); a job that fits nowhere is skipped
/// so smaller jobs behind it can still run (backfill).
pub fn place(queue: &[Candidate], workers: &[Slot]) -> Vec<Assignment> {
    let mut order: Vec<usize> = (0..queue.len()).collect();
    order.sort_by(|&a, &b| queue_order(&queue[a], &queue[b]));
    let mut room: Vec<Slot> = workers.to_vec();
    let mut out = Vec::new();
    for job in order {
        if room.iter().all(|w| w.max_jobs == 0) {
            break;
        }
        let request = &queue[job].request;
        let best = room
            .iter()
            .enumerate()
            .filter(|(_, w)| w.max_jobs > 0 && w.free.fits(request))
            .max_by(|(ia, a), (ib, b)| a.free.cpu_millis.cmp(&b.free.cpu_millis).then(ib.cmp(ia)))
            .map(|(i, _)| i);
        if let Some(worker) = best {
            room[worker].free = room[worker].free.saturating_sub(request);
            room[worker].max_jobs -= 1;
            out.push(Assignment { job, worker });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(id: &str, priority: i32, created: i64, cpu: u32) -> Candidate {
        Candidate {
            priority,
            created_at_ms: created,
            id: id.into(),
            request: Resources::new(cpu, 100, 100),
        }
    }

    fn slot(cpu: u32, max_jobs: usize) -> Slot {
        Slot {
            free: Resources::new(cpu, 10_000, 10_000),
            max_jobs,
        }
    }

    #[test]
    fn priority_then_age_decides() {
        let q = vec![
            job("a", 0, 1, 1000),
            job("b", 5, 2, 1000),
            job("c", 0, 0, 1000),
        ];
        let got = place(&q, &[slot(2000, 10)]);
        let ids: Vec<&str> = got.iter().map(|a| q[a.job].id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn a_job_too_big_is_skipped_and_smaller_ones_backfill() {
        let q = vec![job("big", 9, 0, 4000), job("small", 0, 1, 500)];
        let got = place(&q, &[slot(2000, 10)]);
        assert_eq!(got, vec![Assignment { job: 1, worker: 0 }]);
    }

    #[test]
    fn jobs_asking_1500m_run_one_at_a_time_on_2000m() {
        let q = vec![job("a", 0, 0, 1500), job("b", 0, 1, 1500)];
        assert_eq!(place(&q, &[slot(2000, 10)]).len(), 1);
    }

    #[test]
    fn load_spreads_to_the_freest_worker() {
        let q = vec![job("a", 0, 0, 500), job("b", 0, 1, 500)];
        let got = place(&q, &[slot(1000, 10), slot(2000, 10)]);
        assert_eq!(got[0].worker, 1);
        assert_eq!(
            got[1].worker, 1,
            "after a, worker 1 has 1500 free, still more"
        );
    }

    fn arb_queue() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec(
            (-2i32..3, 0i64..50, 1u32..3000, 1u64..3000, 1u64..3000),
            0..60,
        )
        .prop_map(|jobs| {
            jobs.into_iter()
                .enumerate()
                .map(|(i, (p, t, c, m, d))| Candidate {
                    priority: p,
                    created_at_ms: t,
                    id: format!("{i:04}"),
                    request: Resources::new(c, m, d),
                })
                .collect()
        })
    }

    fn arb_workers() -> impl Strategy<Value = Vec<Slot>> {
        proptest::collection::vec((0u32..8000, 0u64..8000, 0u64..8000, 0usize..6), 1..5).prop_map(
            |ws| {
                ws.into_iter()
                    .map(|(c, m, d, n)| Slot {
                        free: Resources::new(c, m, d),
                        max_jobs: n,
                    })
                    .collect()
            },
        )
    }

    proptest! {
        /// Capacity: what lands on a worker fits in its free resources, and
        /// no worker takes more jobs than its slots.
        #[test]
        fn never_overcommits(queue in arb_queue(), workers in arb_workers()) {
            let got = place(&queue, &workers);
            for (w, slot) in workers.iter().enumerate() {
                let mine: Vec<_> = got.iter().filter(|a| a.worker == w).collect();
                prop_assert!(mine.len() <= slot.max_jobs);
                let used = mine.iter().fold(Resources::ZERO, |acc, a| acc.saturating_add(&queue[a.job].request));
                prop_assert!(slot.free.fits(&used));
            }
        }

        /// Uniqueness: each job is placed at most once.
        #[test]
        fn places_each_job_once(queue in arb_queue(), workers in arb_workers()) {
            let got = place(&queue, &workers);
            let mut jobs: Vec<usize> = got.iter().map(|a| a.job).collect();
            jobs.sort_unstable();
            jobs.dedup();
            prop_assert_eq!(jobs.len(), got.len());
        }

        /// Order: assignments come out in queue order, and a skipped job did
        /// not fit any worker with a slot left at its turn (so nothing of
        /// higher priority is passed over while it could have run).
        #[test]
        fn skips_only_what_does_not_fit(queue in arb_queue(), workers in arb_workers()) {
            let got = place(&queue, &workers);
            let mut order: Vec<usize> = (0..queue.len()).collect();
            order.sort_by(|&a, &b| queue_order(&queue[a], &queue[b]));
            let mut room = workers.clone();
            let mut next = got.iter().peekable();
            for job in order {
                if room.iter().all(|w| w.max_jobs == 0) { break; }
                match next.peek() {
                    Some(a) if a.job == job => {
                        room[a.worker].free = room[a.worker].free.saturating_sub(&queue[job].request);
                        room[a.worker].max_jobs -= 1;
                        next.next();
                    }
                    _ => prop_assert!(
                        !room.iter().any(|w| w.max_jobs > 0 && w.free.fits(&queue[job].request)),
                        "job {} was skipped though it fit", job
                    ),
                }
            }
            prop_assert!(next.next().is_none(), "assignments out of queue order");
        }
    }
}
