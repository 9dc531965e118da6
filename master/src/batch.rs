//! Group commit: requests that arrive while a write transaction runs wait
//! for it to end, then go to the database together in the next one.
//!
//! An idle master sends each request alone, at once (a batch of one costs
//! one channel hop more than a direct call). A busy one pays a
//! transaction's fixed costs (begin, commit, the round trips of each
//! statement) once per batch instead of once per request: this, not SQL,
//! is what bounded the master's jobs/s (docs/PERFORMANCE.md).
//!
//! A batch that fails as a whole (a database error, a deadlock between two
//! masters) is run again one request at a time, so one request never fails
//! for another's sake.

use async_trait::async_trait;
use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::store::{Each, only};

/// The most requests one transaction carries.
pub const MAX_BATCH: usize = 128;
/// The most requests waiting for a batch; callers beyond it wait to queue
/// (back-pressure on an overloaded database instead of unbounded memory).
const MAX_QUEUED: usize = 64 * MAX_BATCH;

/// A write that can be done for many requests at once.
#[async_trait]
pub trait BatchWrite: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// One outcome per request, in order; the outer error fails them all.
    async fn write(&self, requests: &[Self::Request]) -> Result<Each<Self::Response>>;
}

type Waiting<W> = (
    <W as BatchWrite>::Request,
    oneshot::Sender<Result<<W as BatchWrite>::Response>>,
);

/// A thread of its own for the batch tasks. On a busy master the runtime's
/// workers are full of request handlers; a write transaction's next
/// statement would wait behind them at every round trip to the database,
/// and with one SQLite writer that wait is everyone's. Here a woken batch
/// task runs at once. Stops when dropped.
pub struct WriteThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl WriteThread {
    pub fn start() -> std::io::Result<WriteThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ffleet-writes".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(WriteThread {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for WriteThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A cloneable handle to the tasks that run batches of `W`.
pub struct Batcher<W: BatchWrite> {
    queue: mpsc::Sender<Waiting<W>>,
}

impl<W: BatchWrite> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<W: BatchWrite> Batcher<W> {
    /// Starts the task, on `thread`, that runs one batch at a time; it
    /// ends when the last handle is dropped. `sizes` observes each batch's
    /// size.
    ///
    /// One batch at a time per kind, on both backends: SQLite has one
    /// writer anyway, and on Postgres, with two masters, one at a time
    /// moved more jobs than two or five (bigger batches, fewer round
    /// trips; docs/PERFORMANCE.md). Several masters still write side by
    /// side.
    pub fn spawn(write: W, sizes: Histogram, thread: &WriteThread) -> Self {
        let (queue, mut receiver) = mpsc::channel::<Waiting<W>>(MAX_QUEUED);
        thread.handle.spawn(async move {
            let mut waiting = Vec::with_capacity(MAX_BATCH);
            // Everything queued, up to the cap, is the next batch.
            while receiver.recv_many(&mut waiting, MAX_BATCH).await > 0 {
                sizes.observe(waiting.len() as f64);
                run(&write, &mut waiting).await;
            }
        });
        Batcher { queue }
    }

    /// Sends one request with whatever else is waiting; returns its outcome.
    pub async fn call(&self, request: W::Request) -> Result<W::Response> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        outcome.await.map_err(|_| Error::ShuttingDown)?
    }
}

/// Runs one batch and answers its callers, draining `waiting`.
async fn run<W: BatchWrite>(write: &W, waiting: &mut Vec<Waiting<W>>) {
    let (requests, replies): (Vec<_>, Vec<_>) = waiting.drain(..).unzip();
    match write.write(&requests).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) if requests.len() == 1 => {
            let reply = replies.into_iter().next().expect("one reply");
            let _ = reply.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = requests.len(), "batched write failed; writing one at a time");
            for (request, reply) in requests.into_iter().zip(replies) {
                let outcome = write
                    .write(std::slice::from_ref(&request))
                    .await
                    .and_then(only);
                let _ = reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use prometheus::HistogramOpts;
    use tokio::sync::Semaphore;

    use super::*;

    /// Echoes requests, recording each batch. A batch holding a negative
    /// number fails as a whole: the stand-in for a whole-transaction
    /// failure (a deadlock between masters) that a test cannot cause on
    /// demand. Each write first takes a permit, so a test can hold the
    /// first batch while more requests queue.
    struct Echo {
        batches: Batches,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl BatchWrite for Echo {
        type Request = i64;
        type Response = i64;

        async fn write(&self, requests: &[i64]) -> Result<Each<i64>> {
            self.gate.acquire().await.expect("gate open").forget();
            self.batches.lock().unwrap().push(requests.to_vec());
            if requests.len() > 1 && requests.iter().any(|r| *r < 0) {
                return Err(Error::Corrupt("whole batch failed".into()));
            }
            Ok(requests
                .iter()
                .map(|r| {
                    if *r < 0 {
                        Err(Error::JobNotFound(r.to_string()))
                    } else {
                        Ok(r * 10)
                    }
                })
                .collect())
        }
    }

    type Batches = Arc<StdMutex<Vec<Vec<i64>>>>;

    fn echo(permits: usize) -> (Batcher<Echo>, Batches, Arc<Semaphore>) {
        let thread = WriteThread::start().unwrap();
        let batches = Arc::new(StdMutex::new(vec![]));
        let gate = Arc::new(Semaphore::new(permits));
        let sizes = Histogram::with_opts(HistogramOpts::new("sizes", "test")).unwrap();
        let write = Echo {
            batches: batches.clone(),
            gate: gate.clone(),
        };
        let batcher = Batcher::spawn(write, sizes, &thread);
        // The tasks outlive the test's handle on the thread.
        std::mem::forget(thread);
        (batcher, batches, gate)
    }

    /// Calls `b` with each request from its own task, after one call that
    /// holds the batch task at the gate, so that they all queue; then opens
    /// the gate and returns their outcomes in order.
    async fn queued_behind_a_held_batch(
        b: &Batcher<Echo>,
        gate: &Semaphore,
        requests: &[i64],
    ) -> Vec<Result<i64>> {
        let spawn = |i: i64| {
            let b = b.clone();
            tokio::spawn(async move { b.call(i).await })
        };
        let holder = spawn(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let calls: Vec<_> = requests.iter().map(|i| spawn(*i)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.add_permits(1000);
        assert_eq!(holder.await.unwrap().unwrap(), 0);
        let mut outcomes = vec![];
        for c in calls {
            outcomes.push(c.await.unwrap());
        }
        outcomes
    }

    #[tokio::test]
    async fn requests_that_wait_for_a_running_batch_share_the_next() {
        let (batcher, batches, gate) = echo(0);
        let requests: Vec<i64> = (1..=40).collect();
        let outcomes = queued_behind_a_held_batch(&batcher, &gate, &requests).await;
        for (i, outcome) in requests.iter().zip(outcomes) {
            assert_eq!(outcome.unwrap(), i * 10);
        }
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 40], "one alone, then all that waited together");
    }

    #[tokio::test]
    async fn a_batch_that_fails_whole_is_retried_one_by_one() {
        let (batcher, batches, gate) = echo(0);
        let outcomes = queued_behind_a_held_batch(&batcher, &gate, &[5, -1, 7]).await;
        assert_eq!(outcomes[0].as_ref().ok(), Some(&50));
        assert!(matches!(outcomes[1], Err(Error::JobNotFound(_))));
        assert_eq!(outcomes[2].as_ref().ok(), Some(&70));
        let seen = batches.lock().unwrap().clone();
        assert_eq!(seen, [vec![0], vec![5, -1, 7], vec![5], vec![-1], vec![7]]);
    }
}
