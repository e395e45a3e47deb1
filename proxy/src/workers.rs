//! The data path's worker threads: a tokio runtime of its own per worker, with one thread, its
//! own epoll instance, timers and run queue, and its own socket of every listener (thread per
//! core, as Envoy, HAProxy and nginx run their workers).
//!
//! Why not one multi-thread runtime for all workers: its threads share one I/O driver, so the worker polling
//! epoll schedules every woken connection and the others steal from it; on a 2-core host
//! shared with the load generator and the origin, a preempted worker held the connections it
//! had taken while the other one could not help. With 2 workers, HTTP/1.1 small responses had
//! a p99 of 4.0-4.7 ms against HAProxy's 2.0-2.1 ms in the same minutes (its p50 was lower).
//! Here a connection lives on the worker that accepted it, with the upstream connections
//! that worker pooled, and the kernel spreads new connections over the workers' sockets
//! (SO_REUSEPORT).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tokio::runtime::Handle;

thread_local! {
    /// The index of the worker this thread runs, or `usize::MAX` off the workers.
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The running worker threads (cheap to clone: the runtimes' handles).
#[derive(Clone)]
pub struct Workers {
    handles: Arc<[Handle]>,
    /// Open connections per worker.
    load: Arc<[AtomicUsize]>,
}

/// A connection counted on its worker until dropped.
pub struct Open {
    load: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads named `bearing-worker-<index>`; they run until the
    /// process exits. With `pin`, worker `i` runs only on the `i`-th CPU this process may use
    /// (wrapping round when there are more workers than CPUs).
    pub fn start(count: usize, pin: bool) -> io::Result<Workers> {
        let cpus = if pin { allowed_cpus()? } else { Vec::new() };
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            // A multi-thread runtime of one thread rather than a current-thread one: the same
            // isolation, and its scheduler (the LIFO slot runs a task woken by the one
            // running next) gave a lower p99 with 1 worker, http1-small: 1.66-1.83 ms against
            // 1.91-2.08 in all five alternating rounds (2.88 vs 2.98 in a noisy sixth).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(format!("bearing-worker-{index}"))
                .on_thread_start(move || {
                    WORKER.set(index);
                    if let Some(cpu) = cpu {
                        pin_this_thread(index, cpu);
                    }
                })
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            // The workers serve until the process exits; a runtime dropped on the control
            // thread's runtime at exit would panic.
            std::mem::forget(runtime);
        }
        Ok(Workers {
            handles: handles.into(),
            load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// Where a connection accepted on this worker runs, counted there: here (`None`), or on
    /// the worker with the fewest open connections when it has at least two fewer than this
    /// one. Off the workers, on the least loaded one.
    pub fn place(&self) -> (Open, Option<&Handle>) {
        let here = current();
        let count = |i: usize| self.load[i].load(Ordering::Relaxed);
        let lightest = (0..self.load.len()).min_by_key(|&i| count(i)).unwrap_or(0);
        let index = match here {
            i if i < self.load.len() && count(i) <= count(lightest) + 1 => i,
            _ => lightest,
        };
        self.load[index].fetch_add(1, Ordering::Relaxed);
        let open = Open {
            load: self.load.clone(),
            index,
        };
        (open, (index != here).then(|| &self.handles[index]))
    }

    /// The workers' runtimes, in index order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Runs `f` on worker `index` and returns what it returns (tests of per-worker state).
    #[cfg(test)]
    pub(crate) fn run_on<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handles[index].spawn(async move {
            let _ = tx.send(f());
        });
        rx.recv().unwrap()
    }
}

/// The CPUs this process may run on (its affinity mask, as a cpuset or `taskset` left it).
fn allowed_cpus() -> io::Result<Vec<usize>> {
    let mask = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| io::Error::other(format!("cannot read the CPU affinity: {e}")))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| mask.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Restricts the calling worker thread to `cpu`. A failure (a cpuset changed since start)
/// leaves the worker unpinned, which only costs latency, so it is logged, not fatal.
fn pin_this_thread(index: usize, cpu: usize) {
    let mut only = CpuSet::new();
    let pinned = only
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &only));
    match pinned {
        Ok(()) => tracing::debug!(worker = index, cpu, "worker pinned"),
        Err(e) => tracing::warn!(worker = index, cpu, "cannot pin the worker to its CPU: {e}"),
    }
}

/// The index of the worker running the caller (`usize::MAX` off the workers): per-worker
/// state such as idle upstream connections is kept under it.
pub fn current() -> usize {
    WORKER.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_own_worker_thread() {
        let workers = Workers::start(2, false).unwrap();
        assert_eq!(current(), usize::MAX);
        for index in 0..2 {
            let (seen, name) = workers.run_on(index, || {
                (current(), std::thread::current().name().map(str::to_owned))
            });
            assert_eq!(seen, index);
            assert_eq!(
                name.as_deref(),
                Some(format!("bearing-worker-{index}").as_str())
            );
        }
    }

    #[test]
    fn pinned_workers_each_run_on_one_allowed_cpu_in_turn() {
        let allowed = allowed_cpus().unwrap();
        let workers = Workers::start(allowed.len() + 1, true).unwrap();
        for index in 0..workers.handles().len() {
            let pinned_to = workers.run_on(index, || allowed_cpus().unwrap());
            assert_eq!(pinned_to, vec![allowed[index % allowed.len()]]);
        }
    }

    #[test]
    fn connections_stay_where_accepted_until_another_worker_has_two_fewer() {
        let workers = Workers::start(2, false).unwrap();
        let placing = workers.clone();
        let (placed, loads) = workers.run_on(0, move || {
            let mut held = Vec::new();
            let mut placed = Vec::new();
            for _ in 0..5 {
                let (open, elsewhere) = placing.place();
                placed.push((open.index, elsewhere.is_some()));
                held.push(open);
            }
            let loads: Vec<usize> = placing
                .load
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .collect();
            drop(held);
            (placed, loads)
        });
        assert_eq!(
            placed,
            [(0, false), (0, false), (1, true), (0, false), (1, true)]
        );
        assert_eq!(loads, [3, 2]);
        let after: Vec<usize> = workers
            .load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect();
        assert_eq!(after, [0, 0], "a closed connection is no longer counted");
        // Off the workers, a connection goes to the least loaded one.
        let (first, _) = workers.place();
        let (second, _) = workers.place();
        assert_eq!((first.index, second.index), (0, 1));
    }
}
