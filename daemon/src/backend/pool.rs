//! The worker pool behind `--thread-pool-size`: request chains popped by a queue's thread are
//! served on these threads, so one request queue can have several requests in flight.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// A unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one bounded channel.
pub struct WorkerPool {
    tx: Mutex<SyncSender<Job>>,
}

impl WorkerPool {
    /// Starts `size` (at least 1) worker threads taking jobs from a queue of at most `backlog`
    /// (at least 1) waiting jobs: [`WorkerPool::execute`] blocks while it is full, so a queue
    /// thread stops popping chains a guest keeps posting faster than they are served.
    ///
    /// Threads inherit the signal mask of the thread that creates them: create the pool after
    /// SIGTERM/SIGINT are blocked, so they reach the signal thread.
    pub fn new(size: usize, backlog: usize) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(backlog.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("fuse-worker-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(WorkerPool { tx: Mutex::new(tx) })
    }

    /// Queues `job`, waiting while the backlog is full; it runs on the next free worker.
    pub fn execute(&self, job: Job) {
        // The receiver lives as long as any worker, and workers only end when the sender is
        // dropped, so sending cannot fail while the pool exists.
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn jobs_run_concurrently_on_every_worker() {
        let pool = WorkerPool::new(4, 4).unwrap();
        // Four jobs that can only all finish if four run at the same time.
        let barrier = Arc::new(Barrier::new(5));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let (b, d) = (barrier.clone(), done.clone());
            pool.execute(Box::new(move || {
                b.wait();
                d.fetch_add(1, Ordering::SeqCst);
            }));
        }
        barrier.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while done.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(done.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_full_backlog_holds_the_submitter_back() {
        let pool = Arc::new(WorkerPool::new(1, 1).unwrap());
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        // The worker is busy until the gate opens; one more job fills the backlog.
        pool.execute(Box::new(move || {
            g.wait();
        }));
        pool.execute(Box::new(|| {}));
        let submitted = Arc::new(AtomicUsize::new(0));
        let (p, s) = (pool.clone(), submitted.clone());
        let t = std::thread::spawn(move || {
            p.execute(Box::new(|| {}));
            s.store(1, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(submitted.load(Ordering::SeqCst), 0, "the third job waits");
        gate.wait();
        t.join().unwrap();
        assert_eq!(submitted.load(Ordering::SeqCst), 1);
    }
}
