//! A persistent pool for the kernels' parallel loops: the calling thread and
//! `threads - 1` helper threads (rayon's thread count, so `RAYON_NUM_THREADS`
//! still sets it) share the items of one call through an atomic counter. A decode
//! step runs some 120 matmuls and 30 attentions in a few milliseconds: through
//! rayon each one woke sleeping workers and put the caller to sleep on a latch
//! (futex calls, and on a VM an idle vCPU's wake-up), where here the helpers spin
//! briefly between calls, as llama.cpp's threadpool does, and the caller never
//! sleeps: it takes items itself and waits only for items already taken.
//!
//! One call at a time uses the pool; a second caller meanwhile (another model's
//! engine, a test thread) and a call from inside an item run on rayon instead.
//! Helpers spin for [`SPIN`], yield for up to [`YIELD`] after their last item,
//! then park until the next call wakes them. `TENZRO_CPU_POOL=rayon` (read once)
//! turns the pool off: every call runs on rayon as before.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// One call's work: item `i`.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// How long an idle helper spins on the counter before yielding its core.
const SPIN: Duration = Duration::from_micros(300);
/// How long it yields between looks before parking.
const YIELD: Duration = Duration::from_millis(5);
/// Items per call the packed counter holds (16 bits).
const MAX_ITEMS: usize = 0xFFFF;

struct Shared {
    /// `generation << 32 | next item << 16 | items`: a helper claims an item
    /// with one compare-and-swap, which fails once a newer call replaced it.
    state: AtomicU64,
    /// The current call's job: a thin pointer to a `&Job` on the caller's stack.
    job: AtomicPtr<()>,
    /// Items of the current call that have returned.
    done: AtomicUsize,
    /// An item of the current call panicked on a helper.
    panicked: AtomicBool,
    /// Helpers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    /// Held by the one caller using the pool.
    caller: Mutex<()>,
}

struct Pool {
    shared: &'static Shared,
    threads: usize,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// Threads a call spreads over: the caller and the helpers.
pub fn threads() -> usize {
    match pool() {
        Some(p) => p.threads,
        None => rayon::current_num_threads().max(1),
    }
}

fn pool() -> Option<&'static Pool> {
    POOL.get_or_init(start).as_ref()
}

fn start() -> Option<Pool> {
    let threads = rayon::current_num_threads();
    if threads < 2 || std::env::var("TENZRO_CPU_POOL").is_ok_and(|v| v == "rayon") {
        return None;
    }
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        state: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        sleepers: AtomicUsize::new(0),
        park: Mutex::new(()),
        wake: Condvar::new(),
        caller: Mutex::new(()),
    }));
    for i in 1..threads {
        std::thread::Builder::new()
            .name(format!("tenzro-kernels-{i}"))
            .spawn(move || helper(shared))
            .ok()?;
    }
    Some(Pool { shared, threads })
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `f(i)` for every `i < n`, spread over the pool's threads and the caller's;
/// returns once every call has returned (a panic in one is resumed here).
pub fn for_each(n: usize, f: &Job<'_>) {
    let Some(p) = pool() else {
        return match rayon::current_num_threads() {
            1 => (0..n).for_each(f),
            _ => (0..n).into_par_iter().for_each(f),
        };
    };
    if n <= 1 {
        return (0..n).for_each(f);
    }
    let one_caller = match p.shared.caller.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(g)) => g.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n).into_par_iter().for_each(f),
    };
    if n > MAX_ITEMS {
        drop(one_caller);
        return (0..n).into_par_iter().for_each(f);
    }
    p.run(n, f);
    drop(one_caller);
}

/// [`for_each`] over `items`, each given to exactly one call of `f`.
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    for_each(cells.len(), &|i| {
        if let Some(c) = cells.get(i) {
            let mut item = c.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut item);
        }
    });
}

fn has_work(state: u64) -> bool {
    (state >> 16) & 0xFFFF < state & 0xFFFF
}

/// Take the next item of the current call, if any is left.
fn claim(s: &Shared) -> Option<usize> {
    let mut st = s.state.load(Ordering::Acquire);
    loop {
        if !has_work(st) {
            return None;
        }
        let next = ((st >> 16) & 0xFFFF) as usize;
        match s
            .state
            .compare_exchange_weak(st, st + (1 << 16), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(next),
            Err(now) => st = now,
        }
    }
}

impl Pool {
    /// Publish `f` as the next call, take items until none is left, then wait
    /// for the items the helpers took. The caller holds `caller`.
    fn run(&self, n: usize, f: &Job<'_>) {
        let s = self.shared;
        let job: &Job<'_> = f;
        s.job
            .store((&raw const job).cast_mut().cast(), Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        let generation = ((s.state.load(Ordering::Relaxed) >> 32) + 1) & 0xFFFF_FFFF;
        s.state.store(generation << 32 | n as u64, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            // A helper counted in `sleepers` holds `park` until it waits, so
            // taking it here means the helper is waiting (or saw the work).
            drop(lock(&s.park));
            s.wake.notify_all();
        }
        let mut failed = None;
        while let Some(i) = claim(s) {
            if let (Err(e), None) = (catch_unwind(AssertUnwindSafe(|| f(i))), &failed) {
                failed = Some(e);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
        // Every item is taken; wait for the ones running on helpers. Until
        // `done` reaches `n` a helper may still hold `job`, which points into
        // this frame: returning (or unwinding) earlier would leave it dangling.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            spins = spins.saturating_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Some(e) = failed {
            resume_unwind(e);
        }
        if s.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a kernel item panicked on a pool thread"));
        }
    }
}

fn helper(s: &'static Shared) {
    loop {
        wait_for_work(s);
        while let Some(i) = claim(s) {
            // SAFETY: this thread claimed item `i` of the current call, whose
            // caller stored `job` (a pointer to its `&Job`, on its stack) before
            // publishing the call with a release store that the claim's acquire
            // saw. That caller stays inside `Pool::run` until `done` counts
            // every item, this one included, so the pointer and the reference
            // it points to are live until the `fetch_add` below; a newer call
            // cannot have replaced `job` before then either.
            let f: &Job<'_> = unsafe { *s.job.load(Ordering::Acquire).cast::<&Job<'_>>() };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Return once the current call has an item left: spin, then yield, then park.
fn wait_for_work(s: &Shared) {
    let idle = Instant::now();
    let mut looks = 0u32;
    loop {
        if has_work(s.state.load(Ordering::Acquire)) {
            return;
        }
        looks = looks.wrapping_add(1);
        if !looks.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let waited = idle.elapsed();
        if waited >= YIELD {
            break;
        }
        if waited >= SPIN {
            std::thread::yield_now();
        }
    }
    let mut g = lock(&s.park);
    s.sleepers.fetch_add(1, Ordering::SeqCst);
    while !has_work(s.state.load(Ordering::SeqCst)) {
        g = match s.wake.wait_timeout(g, Duration::from_millis(200)) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
    s.sleepers.fetch_sub(1, Ordering::SeqCst);
    drop(g);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every item runs exactly once, calls after calls, from several threads at
    /// once (the second caller of a moment takes rayon).
    #[test]
    fn every_item_runs_exactly_once() {
        std::thread::scope(|scope| {
            for t in 0..3 {
                scope.spawn(move || {
                    for round in 0..200usize {
                        let n = 1 + (round * 7 + t) % 40;
                        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                        for_each(n, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn items_get_their_own_slots() {
        let mut v: Vec<usize> = (0..37).collect();
        for_each_mut(&mut v, &|x| *x *= 2);
        assert_eq!(v, (0..37).map(|x| x * 2).collect::<Vec<_>>());
        for_each(0, &|_| panic!("no items"));
    }

    #[test]
    fn a_panicking_item_reaches_the_caller() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each(16, &|i| {
                if i == 3 {
                    panic!("item 3");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still serves calls afterwards.
        let hits = AtomicU32::new(0);
        for_each(9, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 9);
    }
}
