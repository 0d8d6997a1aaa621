//! The worker pool behind `--thread-pool-size`: request chains popped by a queue's thread are
//! served on these threads, so one request queue can have several requests in flight.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// A unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs from one channel.
pub struct WorkerPool {
    tx: Mutex<Sender<Job>>,
}

impl WorkerPool {
    /// Starts `size` (at least 1) worker threads.
    ///
    /// Threads inherit the signal mask of the thread that creates them: create the pool after
    /// SIGTERM/SIGINT are blocked, so they reach the signal thread.
    pub fn new(size: usize) -> io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("fuse-worker-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(WorkerPool { tx: Mutex::new(tx) })
    }

    /// Queues `job`; it runs on the next free worker.
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
        let pool = WorkerPool::new(4).unwrap();
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
}
