//! Worker threads for the big kernels: `run(parts, f)` calls `f(0..parts)`
//! spread over the machine's cores, part 0 on the calling thread.
//!
//! Built for many short jobs per training step: a helper spins for a while
//! after each job (a wake-up from sleep costs tens of microseconds on a VM)
//! before it parks, and publishing a job allocates nothing, so compiled
//! steps stay allocation-free. One job runs at a time; a job that calls
//! `run` again (or a second caller) runs its parts inline.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;

/// How long an idle helper spins before it sleeps (iterations of a pause loop, ~50 µs).
const SPIN: u32 = 20_000;

/// A job: the closure, erased to a raw fat pointer that lives on the caller's
/// stack while the caller waits for every helper to finish it.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    parts: usize,
}

struct Shared {
    job: UnsafeCell<Option<Job>>,
    /// Bumped (after `job` is written) to publish a job.
    epoch: AtomicU64,
    /// Helpers still working on the current job.
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    busy: AtomicBool,
}

// SAFETY: `job` is written only by the caller holding `busy`, before the
// `epoch` release store, and read by helpers after the acquire load of a
// new epoch; the closure it points to is `Sync` and outlives the job.
unsafe impl Sync for Shared {}

pub struct Pool {
    shared: &'static Shared,
    threads: usize,
}

/// The process-wide pool: one thread per core (at most 8), or `D2L_THREADS`.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let threads = std::env::var("D2L_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n >= 1).unwrap_or(cores);
        Pool::new(threads)
    })
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        }));
        let mut spawned = 1;
        for helper in 1..threads {
            let ok = thread::Builder::new().name(format!("d2l-worker-{helper}")).spawn(move || worker(shared, helper, threads)).is_ok();
            if !ok {
                break;
            }
            spawned += 1;
        }
        Pool { shared, threads: spawned }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` for every `i < parts`, in parallel, and returns when all are done.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = self.shared;
        if parts <= 1 || self.threads == 1 || s.busy.swap(true, Ordering::Acquire) {
            (0..parts).for_each(f);
            return;
        }
        // SAFETY: the lifetime is erased, but `run` does not return before
        // every helper has finished with the job (`pending` reaches 0).
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let helpers = (self.threads - 1).min(parts - 1);
        // SAFETY: we hold `busy`; helpers read `job` only after the epoch bump below.
        unsafe { *s.job.get() = Some(Job { f, parts }) };
        s.pending.store(helpers, Ordering::Relaxed);
        // SeqCst on both sides (here and in `worker`): a helper about to
        // sleep either sees this epoch or is counted in `sleepers`.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock();
            s.wake.notify_all();
        }
        // SAFETY: `f` is valid for the duration of this call.
        let job = unsafe { &*f };
        for part in (0..parts).step_by(self.threads) {
            job(part);
        }
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 20 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        s.busy.store(false, Ordering::Release);
    }
}

fn worker(s: &'static Shared, index: usize, threads: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard = if s.epoch.load(Ordering::SeqCst) == seen { s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()) } else { guard };
            s.sleepers.fetch_sub(1, Ordering::AcqRel);
            drop(guard);
            spins = 0;
        }
        // SAFETY: published before the epoch we just observed (acquire).
        let Some(job) = (unsafe { *s.job.get() }) else { continue };
        if index < job.parts {
            // SAFETY: the caller keeps the closure alive until `pending` is 0.
            let f = unsafe { &*job.f };
            for part in (index..job.parts).step_by(threads) {
                f(part);
            }
            s.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        let pool = Pool::new(3);
        for parts in [1, 2, 3, 7] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            pool.run(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "parts = {parts}");
        }
    }
}
