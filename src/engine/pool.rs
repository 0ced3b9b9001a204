//! The worker pool's job queue: a bounded crossbeam channel used only
//! through its non-blocking calls, and our own sleeping and waking.
//!
//! A blocking crossbeam `recv` spins, yields four times, then sleeps, and
//! every send wakes a sleeping receiver even while another worker is about
//! to take the job, so with two workers per core many wakeups found nothing
//! to do. Here a worker that runs out of jobs searches for a moment
//! (`SEARCH_TRIES` looks, then `SEARCH_YIELDS` looks with a `sched_yield`
//! between them, so the shards run meanwhile), then sleeps on a condition
//! variable; a new job wakes a sleeper only when no worker is searching, and
//! a worker that finds a job with more queued behind it wakes the next one,
//! so a queue never waits on one busy worker. Measured in
//! docs/benchmarks.md (login sessions, `scripts/bench-login-ab`); without
//! the yields, workers slept and were woken more and a login cost more.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::TryRecvError;
use parking_lot::{Condvar, Mutex};

/// Looks at the queue a worker takes before it sleeps (a few µs).
const SEARCH_TRIES: usize = 64;

/// Then looks with a `sched_yield` between them: the shards run meanwhile,
/// and a job they queue is found without a wakeup.
const SEARCH_YIELDS: usize = 4;

struct Shared {
    /// Workers looking at the queue, not yet asleep.
    searching: AtomicUsize,
    /// Workers asleep (changed under `lock`).
    sleepers: AtomicUsize,
    /// Every sender is gone: sleepers wake to drain and stop.
    closed: AtomicBool,
    lock: Mutex<()>,
    wakeup: Condvar,
}

impl Shared {
    /// Wakes one sleeper unless a searching worker will find the job.
    /// Called after the job is queued: the queue write, then these reads,
    /// against a worker's counter write, then its look at the queue
    /// (all sequentially consistent), so one of the two sees the other.
    fn job_queued(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) == 0 && self.sleepers.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock();
            self.wakeup.notify_one();
        }
    }
}

/// Wakes every sleeper when the last [`Sender`] is dropped.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        let _held = self.0.lock.lock();
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wakeup.notify_all();
    }
}

/// The submitting end (cloned by every shard).
pub struct Sender<T> {
    // Dropped before `closer`: when the last sender goes, the channel is
    // disconnected by the time the sleepers are woken to see it.
    tx: crossbeam_channel::Sender<T>,
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            _closer: Arc::clone(&self._closer),
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` without waiting; gives it back when the queue is full.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        self.tx.try_send(item).map_err(|e| e.into_inner())?;
        self.shared.job_queued();
        Ok(())
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The workers' end.
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            rx: self.rx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What a search of the queue found.
enum Search<T> {
    Found(T),
    Empty,
    Closed,
}

impl<T> Receiver<T> {
    /// The next item, sleeping while there is none; `None` once every
    /// sender is gone and the queue is empty.
    pub fn next(&self) -> Option<T> {
        loop {
            match self.search() {
                Search::Found(item) => return Some(item),
                Search::Closed => return None,
                Search::Empty => self.sleep(),
            }
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn search(&self) -> Search<T> {
        let shared = &self.shared;
        shared.searching.fetch_add(1, Ordering::SeqCst);
        let mut found = Search::Empty;
        for attempt in 0..SEARCH_TRIES + SEARCH_YIELDS {
            match self.rx.try_recv() {
                Ok(item) => {
                    found = Search::Found(item);
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    found = Search::Closed;
                    break;
                }
                Err(TryRecvError::Empty) if attempt < SEARCH_TRIES => std::hint::spin_loop(),
                Err(TryRecvError::Empty) => std::thread::yield_now(),
            }
        }
        shared.searching.fetch_sub(1, Ordering::SeqCst);
        if matches!(found, Search::Found(_)) && !self.rx.is_empty() {
            // More is queued and this worker will be busy: pass it on.
            shared.job_queued();
        }
        found
    }

    fn sleep(&self) {
        let shared = &self.shared;
        let mut held = shared.lock.lock();
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        // A job queued since the search saw the counter at 0 and did not
        // wake anyone: look again before sleeping.
        if self.rx.is_empty() && !shared.closed.load(Ordering::SeqCst) {
            shared.wakeup.wait(&mut held);
        }
        shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queue of at most `bound` items.
pub fn bounded<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(bound);
    let shared = Arc::new(Shared {
        searching: AtomicUsize::new(0),
        sleepers: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        lock: Mutex::new(()),
        wakeup: Condvar::new(),
    });
    let closer = Arc::new(Closer(Arc::clone(&shared)));
    (
        Sender {
            tx,
            shared: Arc::clone(&shared),
            _closer: closer,
        },
        Receiver { rx, shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_queue_gives_the_item_back() {
        let (tx, rx) = bounded(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.next(), Some(1));
    }

    #[test]
    fn sleeping_workers_wake_for_every_job_and_stop_when_senders_go() {
        let (tx, rx) = bounded::<u64>(1024);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut sum = 0;
                    while let Some(n) = rx.next() {
                        sum += n;
                    }
                    sum
                })
            })
            .collect();
        drop(rx);
        // Let every worker fall asleep, then send in trickles and bursts
        // from two threads: nothing may be left unseen.
        std::thread::sleep(Duration::from_millis(50));
        let senders: Vec<_> = (0..2)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let mut item = i * 2 + t;
                        while let Err(back) = tx.try_send(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                        if i % 1000 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        drop(tx);
        let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(total, (0..40_000u64).sum::<u64>());
    }

    #[test]
    fn one_job_reaches_a_sleeping_worker_every_time() {
        let (tx, rx) = bounded::<u32>(4);
        let (back_tx, back_rx) = crossbeam_channel::bounded(4);
        let worker = std::thread::spawn(move || {
            while let Some(n) = rx.next() {
                back_tx.send(n).unwrap();
            }
        });
        for n in 0..2000 {
            tx.try_send(n).unwrap();
            // Each answer must come: a lost wakeup would hang here.
            assert_eq!(back_rx.recv_timeout(Duration::from_secs(5)), Ok(n));
            if n % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // asleep again
            }
        }
        drop(tx);
        worker.join().unwrap();
    }
}
