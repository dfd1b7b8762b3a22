//! The threads the block kernels run on: persistent workers that spin between jobs. A decode
//! step is ~200 matrix products a few tens of microseconds apart; waking a sleeping thread for
//! each (rayon's workers park between jobs) cost more than the products on this 2-core VM.
//! Workers spin while jobs keep coming, yield the core to other runnable threads as they
//! spin, and park after a few milliseconds without work, so an idle model costs no CPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker spins without a job before it parks.
const SPIN_BEFORE_PARKING: Duration = Duration::from_millis(5);

type Task = dyn Fn(usize) + Sync;

struct Job {
    /// The caller's closure, valid until the caller has seen every task finished.
    task: *const Task,
    tasks: usize,
}

// Safety: `task` points to a `Sync` closure that outlives the job (see `Pool::run`).
unsafe impl Send for Job {}

struct Shared {
    /// Bumped for every job, so a worker sees a new one without a lock.
    generation: AtomicUsize,
    job: Mutex<Option<Job>>,
    next: AtomicUsize,
    finished: AtomicUsize,
    /// Workers that picked the posted job up and have not let go of it.
    active: AtomicUsize,
    parked: Mutex<usize>,
    wake: Condvar,
    exit: AtomicBool,
    /// A task's panic, resumed on the caller's thread (a worker never dies of one).
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// One job at a time: a second caller waits for the first.
    running: Mutex<()>,
}

impl Pool {
    /// The process-wide pool: one worker per CPU beyond the caller's.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            Pool::new(cpus.saturating_sub(1))
        })
    }

    fn new(workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            exit: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut started = 0;
        for i in 0..workers {
            let shared = shared.clone();
            let spawned =
                std::thread::Builder::new().name(format!("kernels-{i}")).spawn(move || work(&shared));
            // Without a worker the caller runs every task itself: slower, still right.
            if spawned.is_ok() {
                started += 1;
            }
        }
        Pool { shared, workers: started, running: Mutex::new(()) }
    }

    /// Threads a job runs on: the caller's rayon pool size (the loader's `threads`), at most
    /// the workers plus the caller.
    pub fn threads(&self) -> usize {
        rayon::current_num_threads().clamp(1, self.workers + 1)
    }

    /// Runs `task(i)` for every i in 0..tasks, on the workers and the calling thread, and
    /// returns once all have finished.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.workers == 0 || self.threads() == 1 {
            (0..tasks).for_each(task);
            return;
        }
        let _one_job = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.shared;
        // Safety: before this returns the job is withdrawn (no worker can pick it up any more)
        // and every worker that picked it up has let go, so none uses the pointer after the
        // closure's lifetime.
        let erased: *const Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Task>(task) };
        s.next.store(0, Ordering::Relaxed);
        s.finished.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(Job { task: erased, tasks });
        s.generation.fetch_add(1, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|p| p.into_inner()) > 0 {
            s.wake.notify_all();
        }
        run_tasks(s, task, tasks);
        while s.finished.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        while s.active.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        if let Some(payload) = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.exit.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

fn run_tasks(s: &Shared, task: &(dyn Fn(usize) + Sync + '_), tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        // Counted as finished even if it panics, so the caller is not left waiting for it.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(i))) {
            s.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
        }
        s.finished.fetch_add(1, Ordering::Release);
    }
}

fn work(s: &Shared) {
    let mut seen = s.generation.load(Ordering::Acquire);
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !s.exit.load(Ordering::Acquire) {
        let generation = s.generation.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            let job = {
                let posted = s.job.lock().unwrap_or_else(|p| p.into_inner());
                let job = posted.as_ref().map(|j| (j.task, j.tasks));
                if job.is_some() {
                    s.active.fetch_add(1, Ordering::AcqRel);
                }
                job
            };
            if let Some((task, tasks)) = job {
                // Safety: picked up under the lock the caller withdraws the job with, and the
                // caller waits for `active` to drop before the closure goes.
                run_tasks(s, unsafe { &*task }, tasks);
                s.active.fetch_sub(1, Ordering::AcqRel);
            }
            idle_since = Instant::now();
            spins = 0;
            continue;
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            // Let a runnable thread (the caller's serial work, another process) have the core.
            std::thread::yield_now();
            if idle_since.elapsed() > SPIN_BEFORE_PARKING {
                let mut parked = s.parked.lock().unwrap_or_else(|p| p.into_inner());
                *parked += 1;
                while s.generation.load(Ordering::Acquire) == seen && !s.exit.load(Ordering::Acquire) {
                    parked = s.wake.wait(parked).unwrap_or_else(|p| p.into_inner());
                }
                *parked -= 1;
                idle_since = Instant::now();
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Pool;

    #[test]
    fn every_task_runs_once_and_a_panic_reaches_the_caller() {
        let pool = Pool::new(1);
        let pool_threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool_threads.install(|| {
            for round in 0..200 {
                let counts: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
                pool.run(counts.len(), &|i| {
                    counts[i].fetch_add(round + 1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == round + 1), "round {round}");
            }
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(8, &|i| assert_ne!(i, 5, "task five fails"));
            }));
            assert!(caught.is_err(), "the task's panic is the caller's");
            // The pool still works afterwards.
            let sum = AtomicUsize::new(0);
            pool.run(10, &|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 45);
        });
    }
}
