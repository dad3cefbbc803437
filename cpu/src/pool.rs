//! Worker threads for the big kernels: `run(parts, f)` calls `f(part,
//! worker)` for every part, spread over the machine's cores; the calling
//! thread is worker 0 and takes parts too.
//!
//! Built for many short jobs per training step: a helper spins for a while
//! after each job (a wake-up from sleep costs tens of microseconds on a VM)
//! before it parks, and publishing a job allocates nothing, so compiled
//! steps stay allocation-free. Parts are claimed from a shared counter, so
//! a helper that the OS has descheduled (a busy shared machine) only costs
//! the part it has already started: the others run on whoever is free. One
//! job runs at a time; a nested or concurrent `run` runs inline.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;

/// How long an idle helper spins before it sleeps: iterations of a pause
/// loop, measured at ~0.5 ms on this project's Zen 4 VM (`pause` is slow there).
const SPIN: u32 = 20_000;

/// A job: the closure, erased to a raw fat pointer; the job itself lives on
/// the caller's stack while the caller waits for every part to finish.
struct Job {
    f: *const (dyn Fn(usize, usize) + Sync),
    parts: usize,
}

struct Shared {
    /// The current job, or null between jobs.
    job: AtomicPtr<Job>,
    /// Bumped (after `job` is written) to publish a job.
    epoch: AtomicU64,
    /// Next part to claim, and parts finished, of the current job.
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers inside the current job (they may still read `job`).
    active: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    busy: AtomicBool,
}


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

/// Claims and runs parts of `job` until none are left.
fn work(s: &Shared, job: &Job, worker: usize) {
    // SAFETY: the caller keeps the closure alive until every part is done.
    let f = unsafe { &*job.f };
    loop {
        let part = s.next.fetch_add(1, Ordering::AcqRel);
        if part >= job.parts {
            return;
        }
        f(part, worker);
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        }));
        let mut spawned = 1;
        for helper in 1..threads {
            let ok = thread::Builder::new().name(format!("d2l-worker-{helper}")).spawn(move || worker(shared, helper)).is_ok();
            if !ok {
                break;
            }
            spawned += 1;
        }
        Pool { shared, threads: spawned }
    }

    /// Workers (the caller included): `f`'s second argument is below this.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(part, worker)` for every `part < parts`, in parallel, and
    /// returns when all are done. No two running parts share a worker index.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let s = self.shared;
        if parts <= 1 || self.threads == 1 || s.busy.swap(true, Ordering::Acquire) {
            (0..parts).for_each(|p| f(p, 0));
            return;
        }
        // SAFETY: the lifetime is erased, but `run` does not return before
        // every part is done and no helper can reach the job any more.
        let f: *const (dyn Fn(usize, usize) + Sync) = unsafe { std::mem::transmute(f) };
        let mut job = Job { f, parts };
        s.next.store(0, Ordering::SeqCst);
        s.done.store(0, Ordering::SeqCst);
        s.job.store(&mut job, Ordering::SeqCst);
        // SeqCst on both sides (here and in `worker`): a helper about to
        // sleep either sees this epoch or is counted in `sleepers`.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock();
            s.wake.notify_all();
        }
        work(s, &job, 0);
        let mut spins = 0u32;
        let mut wait = |s: &Shared, until: &dyn Fn(&Shared) -> bool| {
            while !until(s) {
                spins += 1;
                if spins < 2_000 {
                    std::hint::spin_loop();
                } else {
                    // A helper holding a part was descheduled: let it run.
                    thread::yield_now();
                }
            }
        };
        wait(s, &|s| s.done.load(Ordering::Acquire) >= parts);
        // Unpublish, then wait for helpers that may hold the pointer.
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        wait(s, &|s| s.active.load(Ordering::SeqCst) == 0);
        s.busy.store(false, Ordering::Release);
    }
}

fn worker(s: &'static Shared, index: usize) {
    crate::denormals::flush_denormals_forever();
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
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
        }
        // Announce ourselves before reading the job: its caller unpublishes
        // it and then waits for `active` to drop, so a job read here stays alive.
        s.active.fetch_add(1, Ordering::SeqCst);
        let job = s.job.load(Ordering::SeqCst);
        if !job.is_null() {
            // SAFETY: see above.
            work(s, unsafe { &*job }, index);
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_on_distinct_workers() {
        let pool = Pool::new(3);
        for parts in [1, 2, 3, 7, 40] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            let busy: Vec<AtomicBool> = (0..pool.threads()).map(|_| AtomicBool::new(false)).collect();
            pool.run(parts, &|i, w| {
                assert!(!busy[w].swap(true, Ordering::AcqRel), "worker {w} runs two parts at once");
                hits[i].fetch_add(1, Ordering::Relaxed);
                busy[w].store(false, Ordering::Release);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "parts = {parts}");
        }
    }
}
