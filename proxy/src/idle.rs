//! Idle timeouts: work (a TCP relay, an HTTP stream) ended once nothing moved for a set time
//! (Envoy's `tcp_proxy.idle_timeout`, a stream's idle timeout), and a downstream HTTP
//! connection ended once no stream was in flight for a set time ([`Streams`], Envoy's
//! connection manager `idle_timeout`).
//!
//! Re-arming a timer on every read and write, as Envoy does, costs a timer-wheel update per
//! I/O call; here the I/O only bumps a relaxed counter ([`Activity::touch`]), and a ticker
//! looking at it eight times per idle period ends the work after a full period without a
//! bump: between `idle` and `idle * 9/8` after the last byte moved.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many looks at the activity counter one idle period is split into.
const TICKS_PER_PERIOD: u32 = 8;

/// Counts the I/O calls of one piece of work that moved bytes.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    /// Records that bytes moved.
    pub fn touch(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn seen(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records that bytes moved, when the work is watched.
pub fn touch(activity: Option<&Activity>) {
    if let Some(a) = activity {
        a.touch();
    }
}

/// The clock of one idle timeout, polled with a count of the work's activity: expired once
/// the count stayed the same for a whole idle period, looked at each tick.
pub struct IdleClock {
    idle: Duration,
    tick: Duration,
    quiet: Duration,
    last: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl IdleClock {
    /// A clock of `idle`, starting now with the activity count `seen`.
    pub fn new(idle: Duration, seen: u64) -> IdleClock {
        let tick = (idle / TICKS_PER_PERIOD).max(Duration::from_millis(1));
        IdleClock {
            idle,
            tick,
            quiet: Duration::ZERO,
            last: seen,
            sleep: Box::pin(tokio::time::sleep(tick)),
        }
    }

    /// The idle period.
    pub fn period(&self) -> Duration {
        self.idle
    }

    /// Starts the period again from the last look (work that is busy without moving bytes).
    pub fn restart(&mut self) {
        self.quiet = Duration::ZERO;
    }

    /// Ready once the activity count (`seen` now) has not changed for the idle period.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, seen: u64) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            let next = if seen != self.last {
                (self.last, self.quiet) = (seen, Duration::ZERO);
                // Counted from this look, not from the tick's deadline: a tick that fired
                // late may see bytes that moved after its deadline.
                tokio::time::Instant::now() + self.tick
            } else {
                self.quiet += self.tick;
                if self.quiet >= self.idle {
                    return Poll::Ready(());
                }
                self.sleep.deadline() + self.tick
            };
            self.sleep.as_mut().reset(next);
        }
    }
}

/// The streams in flight on one downstream connection (Envoy's connection manager idle
/// timeout: a connection without one for the idle period ends): each open stream holds a
/// [`StreamGuard`], and every opening and end is activity.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    changes: Activity,
}

impl Streams {
    /// A stream opens; it stays open until the guard is dropped.
    pub fn open(streams: &Arc<Streams>) -> StreamGuard {
        streams.open.fetch_add(1, Ordering::Relaxed);
        streams.changes.touch();
        StreamGuard(streams.clone())
    }

    /// How many streams are open now.
    pub fn in_flight(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many times a stream opened or ended so far: a value that moved on means a stream
    /// opened (or ended) since it was read.
    pub fn changes(&self) -> u64 {
        self.changes.seen()
    }

    /// Ready once no stream was open, opened or ended for `clock`'s whole period.
    pub fn poll_idle(&self, clock: &mut IdleClock, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(clock.poll_expired(cx, self.changes.seen()));
            if self.open.load(Ordering::Relaxed) == 0 {
                return Poll::Ready(());
            }
            // A long stream, quiet but open: the connection is not idle.
            clock.restart();
        }
    }
}

/// One open stream of a connection's [`Streams`]; the stream ends when it is dropped (its
/// response sent whole, or the stream reset).
#[derive(Debug)]
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.touch();
    }
}

/// Runs `work` to its end, unless `activity` stays untouched for `idle` (see the module
/// doc for the precision): then `None`, and `work` is dropped.
pub async fn unless_idle<F: Future>(
    work: F,
    idle: Duration,
    activity: &Activity,
) -> Option<F::Output> {
    let mut clock = IdleClock::new(idle, activity.seen());
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        clock.poll_expired(cx, activity.seen()).map(|()| None)
    })
    .await
}

/// A stream whose reads and writes that move bytes touch an [`Activity`] (when given): an
/// idle timeout's watch over a relay that copies through user space (TLS).
pub struct Watched<'a, S> {
    inner: S,
    activity: Option<&'a Activity>,
}

impl<'a, S> Watched<'a, S> {
    /// `inner`, touching `activity` as bytes move.
    pub fn new(inner: S, activity: Option<&'a Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            touch(self.activity);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            touch(self.activity);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn work_that_keeps_moving_runs_to_its_end() {
        let activity = Activity::default();
        let work = async {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                activity.touch();
            }
            "done"
        };
        let out = unless_idle(work, Duration::from_millis(150), &activity).await;
        assert_eq!(
            out,
            Some("done"),
            "a byte every 25 ms keeps a 150 ms idle timeout away"
        );
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_without_open_streams_for_the_period() {
        let streams = Arc::new(Streams::default());
        let period = Duration::from_millis(120);
        let mut clock = IdleClock::new(period, 0);
        let started = Instant::now();
        let guard = Streams::open(&streams);
        // Open for three periods: never idle meanwhile.
        let open = tokio::time::timeout(
            period * 3,
            std::future::poll_fn(|cx| streams.poll_idle(&mut clock, cx)),
        )
        .await;
        assert!(open.is_err(), "idle while a stream was open");
        drop(guard);
        let closed = Instant::now();
        std::future::poll_fn(|cx| streams.poll_idle(&mut clock, cx)).await;
        let idle = closed.elapsed();
        assert!(
            idle >= period && idle < period * 3,
            "idle {idle:?} after the last stream ended, period {period:?} (started {:?} ago)",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn work_that_stops_moving_ends_after_the_idle_period() {
        let activity = Activity::default();
        let last = std::sync::Mutex::new(None);
        let work = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            activity.touch();
            *last.lock().unwrap() = Some(Instant::now());
            std::future::pending::<()>().await
        };
        let out = unless_idle(work, Duration::from_millis(200), &activity).await;
        assert_eq!(out, None);
        let quiet = last.lock().unwrap().expect("the work moved once").elapsed();
        assert!(
            quiet >= Duration::from_millis(200) && quiet < Duration::from_secs(2),
            "ended {quiet:?} after the last byte, with a 200 ms idle timeout"
        );
    }
}
