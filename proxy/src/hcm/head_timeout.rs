//! The request head timeout on hyper's paths (Envoy's `request_headers_timeout`), as the
//! byte codec enforces it on its own: a head not complete this long after its first byte
//! gets Envoy's 408 `request header timeout` with `connection: close`, and the connection
//! closes.
//!
//! hyper's own `header_read_timeout` is off: it starts when the connection waits for a head,
//! so it closed idle keep-alive connections (after 30 s by default), which Envoy keeps for the
//! connection idle timeout. Instead [`HeadTimed`] wraps the stream hyper reads: over HTTP/1.1
//! the first byte read while no request is in flight (the connection's [`Streams`]) arms the
//! deadline (the sooner of the head, stream idle and request timeouts, as the byte codec's),
//! and a request handed to the service disarms it. At the deadline hyper has nothing to write
//! (no request is in flight), so the 408 goes straight to the stream; it is shut down, what the
//! client still sends is read and dropped for a while (so that the close does not reset the
//! answer away), and hyper's read ends with [`HeadTimedOut`].
//!
//! Only a listener with a request head timeout wraps its streams with a clock; without one
//! the wrapper is a pass-through and nothing is timed.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::byte_codec::{reply_head, ReadDeadline, Timeouts, LINGER, LINGER_BYTES};
use super::HttpListener;
use crate::idle::Streams;
use crate::router::Reply;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a connection starting with it is not timed
/// as HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The error hyper's read ends with once a head timed out and was answered: the connection
/// ended as it should, not in error.
#[derive(Debug)]
pub(crate) struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head not received in time: answered 408")
    }
}

impl std::error::Error for HeadTimedOut {}

impl HeadTimedOut {
    /// Whether `error` (a connection's, through any chain of sources) is a head timeout.
    pub(crate) fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(e) = cause {
            let timed_out = e.is::<HeadTimedOut>()
                || e.downcast_ref::<io::Error>()
                    .and_then(|e| e.get_ref())
                    .is_some_and(|inner| inner.is::<HeadTimedOut>());
            if timed_out {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// A stream hyper serves, with the request head timeout of its listener when it has one.
pub(crate) struct HeadTimed<S, L> {
    io: S,
    clock: Option<HeadClock<L>>,
}

impl<S, L: HttpListener> HeadTimed<S, L> {
    /// `io`, timed by `timeouts` when they have a request head timeout: `streams` are the
    /// connection's requests in flight (opened as each is handed to the service), `listener`
    /// counts the 408s, `peer` is logged.
    pub(crate) fn new(
        io: S,
        timeouts: Timeouts,
        watch: Option<(&Arc<Streams>, &Arc<L>)>,
        peer: SocketAddr,
    ) -> Self {
        let clock = match (timeouts.head, watch) {
            (Some(_), Some((streams, listener))) => Some(HeadClock {
                timeouts,
                streams: streams.clone(),
                listener: listener.clone(),
                peer,
                sniffed: 0,
                phase: Phase::Waiting,
                sleep: None,
            }),
            _ => None,
        };
        HeadTimed { io, clock }
    }
}

/// Where a timed connection is.
enum Phase {
    /// No head has started since the last request was handed over.
    Waiting,
    /// A head started: `deadline` and its answer, unless a request is handed over first
    /// (the streams' changes move on from `changes`).
    Armed {
        deadline: ReadDeadline,
        changes: u64,
    },
    /// The deadline passed: Envoy's 408, `written` bytes of it out.
    Answering { reply: Vec<u8>, written: usize },
    /// Answered and shut down: the client's further bytes are read and dropped (`dropped`
    /// so far) until it closes, or the linger's deadline.
    Lingering { dropped: usize },
    /// Over: reads end with [`HeadTimedOut`].
    Ended,
    /// An HTTP/2 connection: not timed here.
    Off,
}

/// The request head timeout of one connection.
struct HeadClock<L> {
    timeouts: Timeouts,
    streams: Arc<Streams>,
    listener: Arc<L>,
    peer: SocketAddr,
    /// How many bytes of the HTTP/2 preface the connection's first bytes matched; past its
    /// length once they did not (HTTP/1.1).
    sniffed: usize,
    phase: Phase,
    /// The timer, made the first time a head does not come in one read.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<L: HttpListener> HeadClock<L> {
    /// Takes note of `bytes` just read: the first of a head while no request is in flight
    /// arms the deadline; an HTTP/2 preface turns the clock off.
    fn read(&mut self, bytes: &[u8]) {
        if self.sniffed < H2_PREFACE.len() {
            let wanted = &H2_PREFACE[self.sniffed..];
            let n = wanted.len().min(bytes.len());
            if bytes[..n] != wanted[..n] {
                self.sniffed = usize::MAX;
            } else {
                self.sniffed += n;
                if self.sniffed == H2_PREFACE.len() {
                    self.phase = Phase::Off;
                    return;
                }
            }
        }
        if matches!(self.phase, Phase::Waiting) && self.streams.in_flight() == 0 {
            if let Some(deadline) = self.timeouts.head_deadline(Instant::now()) {
                let changes = self.streams.changes();
                self.phase = Phase::Armed { deadline, changes };
            }
        }
    }

    /// Whether the armed deadline `at` has passed (the timer polled with `cx` when not).
    fn expired(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx).is_ready()
    }

    /// Envoy's 408 for a head not received by its deadline (`why`: which one), counted on the
    /// listener's responses.
    fn answer(&mut self, why: &'static str) {
        tracing::debug!(peer = %self.peer, "request refused with 408: {why}");
        self.listener.requests().count(408);
        let reply = Reply {
            status: StatusCode::REQUEST_TIMEOUT,
            location: None,
            message: why.to_string(),
            overloaded: false,
            flags: Default::default(),
        };
        let mut bytes = Vec::with_capacity(256);
        reply_head(&reply, true, &mut bytes);
        bytes.extend_from_slice(why.as_bytes());
        self.phase = Phase::Answering {
            reply: bytes,
            written: 0,
        };
    }

    /// Drives the answer to a timed-out head: written, the stream shut down, the client's
    /// further bytes dropped; then hyper's read ends with [`HeadTimedOut`].
    fn poll_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.phase {
                Phase::Answering { reply, written } => {
                    if *written < reply.len() {
                        match std::task::ready!(
                            Pin::new(&mut *io).poll_write(cx, &reply[*written..])
                        ) {
                            Ok(0) | Err(_) => self.phase = Phase::Ended,
                            Ok(n) => *written += n,
                        }
                        continue;
                    }
                    // A failed shutdown leaves nothing to linger for.
                    match std::task::ready!(Pin::new(&mut *io).poll_shutdown(cx)) {
                        Ok(()) => {
                            let until = Instant::now() + LINGER;
                            if let Some(sleep) = self.sleep.as_mut() {
                                sleep.as_mut().reset(until);
                            }
                            self.phase = Phase::Lingering { dropped: 0 };
                        }
                        Err(_) => self.phase = Phase::Ended,
                    }
                }
                Phase::Lingering { dropped } => {
                    let lingered = self
                        .sleep
                        .as_mut()
                        .is_none_or(|sleep| sleep.as_mut().poll(cx).is_ready());
                    if lingered || *dropped >= LINGER_BYTES {
                        self.phase = Phase::Ended;
                        continue;
                    }
                    let before = buf.filled().len();
                    let read = std::task::ready!(Pin::new(&mut *io).poll_read(cx, buf));
                    let n = buf.filled().len() - before;
                    buf.set_filled(before);
                    match read {
                        Ok(()) if n > 0 => *dropped += n,
                        _ => self.phase = Phase::Ended,
                    }
                }
                _ => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)))
                }
            }
        }
    }

    fn poll_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.phase {
            Phase::Off => return Pin::new(io).poll_read(cx, buf),
            Phase::Armed { changes, .. } if self.streams.changes() != changes => {
                // The head became a request.
                self.phase = Phase::Waiting;
            }
            Phase::Answering { .. } | Phase::Lingering { .. } | Phase::Ended => {
                return self.poll_answer(io, cx, buf)
            }
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut *io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Phase::Armed {
                    deadline: (at, why),
                    ..
                } = self.phase
                else {
                    return Poll::Pending;
                };
                if !self.expired(at, cx) {
                    return Poll::Pending;
                }
                self.answer(why);
                self.poll_answer(io, cx, buf)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, L: HttpListener> AsyncRead for HeadTimed<S, L> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.clock {
            None => Pin::new(&mut this.io).poll_read(cx, buf),
            Some(clock) => clock.poll_read(&mut this.io, cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin, L> AsyncWrite for HeadTimed<S, L> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
