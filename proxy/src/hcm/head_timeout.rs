//! The request head timeout on hyper's paths (Envoy's `request_headers_timeout`), as the
//! byte codec enforces it on its own: an HTTP/1.1 head not complete this long after its first
//! byte gets Envoy's 408 `request header timeout` with `connection: close`, and the connection
//! closes; an HTTP/2 header block not complete this long after its HEADERS frame began ends
//! the connection with a GOAWAY.
//!
//! hyper's own `header_read_timeout` is off: it starts when the connection waits for a head,
//! so it closed idle keep-alive connections (after 30 s by default), which Envoy keeps for the
//! connection idle timeout. Instead [`HeadTimed`] wraps the stream hyper reads and looks at
//! the bytes going through:
//! - HTTP/1.1: the first byte read while no request is in flight (the connection's
//!   [`Streams`]) arms the deadline (the sooner of the head, stream idle and request
//!   timeouts, as the byte codec's), and a request handed to the service disarms it. At the
//!   deadline hyper has nothing to write (no request is in flight), so the 408 goes straight
//!   to the stream.
//! - HTTP/2 (the connection starts with its preface): the frame headers read are followed; a
//!   HEADERS frame arms the deadline and the end of the frame that carries END_HEADERS (its
//!   last CONTINUATION) disarms it. hyper's HTTP/2 (h2) has no hook for a stream whose header
//!   block is still arriving, so Envoy's answer (`:status 408`, `request header timeout`,
//!   RST_STREAM(NO_ERROR), the connection kept) cannot be given: at the deadline a GOAWAY
//!   (NO_ERROR, the last stream whose header block came whole, debug data `request header
//!   timeout`) is written when the frames h2 wrote end at a frame boundary, and the
//!   connection closes. A client inside a header block may send nothing but CONTINUATION
//!   frames (RFC 9113 §6.10), so the connection was of no further use to it either (Envoy
//!   answers any other frame with GOAWAY(PROTOCOL_ERROR)).
//!
//! Then the stream is shut down, what the client still sends is read and dropped for a
//! while (so that the close does not reset the answer away), and hyper's read ends with
//! [`HeadTimedOut`]. Only a listener with a request head timeout wraps its streams with a
//! clock; without one the wrapper is a pass-through and nothing is timed.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::byte_codec::{gateway_edits, reply_head, ReadDeadline, Timeouts, LINGER, LINGER_BYTES};
use super::HttpListener;
use crate::idle::Streams;
use crate::router::Reply;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a connection starting with it is timed by
/// its frames.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/2 frame types and the flag that ends a header block (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// The debug data of the GOAWAY that ends a connection whose header block timed out.
const GOAWAY_DEBUG: &[u8] = b"request header timeout";

/// The error hyper's read ends with once a head timed out and was answered: the connection
/// ended as it should, not in error.
#[derive(Debug)]
pub(crate) struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head not received in time: answered and closed")
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

    fn io() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)
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
                protocol: Protocol::Sniffing(0),
                phase: Phase::Waiting,
                sleep: None,
            }),
            _ => None,
        };
        HeadTimed { io, clock }
    }
}

/// What a timed connection speaks, as its first bytes say.
enum Protocol {
    /// Its first bytes matched this much of the HTTP/2 preface so far (timed as HTTP/1.1
    /// meanwhile).
    Sniffing(usize),
    Http1,
    Http2(Box<H2Blocks>),
}

/// Where an HTTP/2 connection's header blocks are.
#[derive(Default)]
struct H2Blocks {
    /// The frames read (after the preface).
    read: Frames,
    /// The frames hyper wrote.
    written: Frames,
    /// The frame being read ends a header block (a HEADERS or CONTINUATION frame with
    /// END_HEADERS).
    ends_block: bool,
    /// The stream whose header block is being read.
    block: u32,
    /// The last stream whose header block was read whole.
    last: u32,
}

/// A position in a sequence of HTTP/2 frames.
#[derive(Default)]
struct Frames {
    /// The frame header being read, `have` bytes of it so far.
    header: [u8; 9],
    have: usize,
    /// Bytes left of the payload of the current frame.
    left: usize,
}

/// What [`Frames::pass`] met.
enum FrameEvent {
    /// A frame header: its type, flags and stream.
    Header(u8, u8, u32),
    /// The end of a frame's payload.
    End,
}

impl Frames {
    /// Goes past `bytes`, telling `on` of each frame header and payload end among them.
    fn pass(&mut self, mut bytes: &[u8], mut on: impl FnMut(FrameEvent)) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                if self.left == 0 {
                    on(FrameEvent::End);
                }
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                let h = &self.header;
                self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                on(FrameEvent::Header(h[3], h[4], stream));
                if self.left == 0 {
                    on(FrameEvent::End);
                }
            }
        }
    }

    /// Whether everything passed ends at a frame boundary.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

/// Where a timed connection is.
enum Phase {
    /// No head has started since the last request was handed over.
    Waiting,
    /// A head started: `deadline` and its answer, unless it is done first (HTTP/1.1: a
    /// request is handed over, the streams' changes move on from `changes`; HTTP/2: its
    /// header block ends).
    Armed {
        deadline: ReadDeadline,
        changes: u64,
    },
    /// The deadline passed: the answer (HTTP/1.1: Envoy's 408; HTTP/2: a GOAWAY, if any),
    /// `written` bytes of it out.
    Answering { reply: Vec<u8>, written: usize },
    /// Answered and shut down: the client's further bytes are read and dropped (`dropped`
    /// so far) until it closes, or the linger's deadline.
    Lingering { dropped: usize },
    /// Over: reads end with [`HeadTimedOut`].
    Ended,
}

/// The request head timeout of one connection.
struct HeadClock<L> {
    timeouts: Timeouts,
    streams: Arc<Streams>,
    listener: Arc<L>,
    peer: SocketAddr,
    protocol: Protocol,
    phase: Phase,
    /// The timer, made the first time a head does not come in one read.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<L: HttpListener> HeadClock<L> {
    /// Arms the deadline of a head starting now, unless one is armed.
    fn arm(&mut self) {
        if let Phase::Waiting = self.phase {
            if let Some(deadline) = self.timeouts.head_deadline(Instant::now()) {
                let changes = self.streams.changes();
                self.phase = Phase::Armed { deadline, changes };
            }
        }
    }

    /// Takes note of `bytes` just read: over HTTP/1.1, the first of a head while no request
    /// is in flight arms the deadline; over HTTP/2, the header blocks' frames arm and disarm
    /// it.
    fn read(&mut self, mut bytes: &[u8]) {
        if let Protocol::Sniffing(matched) = self.protocol {
            let wanted = &H2_PREFACE[matched..];
            let n = wanted.len().min(bytes.len());
            if bytes[..n] != wanted[..n] {
                self.protocol = Protocol::Http1;
            } else if n == wanted.len() {
                self.protocol = Protocol::Http2(Box::default());
                self.phase = Phase::Waiting;
                bytes = &bytes[n..];
            } else {
                self.protocol = Protocol::Sniffing(matched + n);
            }
        }
        let Protocol::Http2(blocks) = &mut self.protocol else {
            if self.streams.in_flight() == 0 {
                self.arm();
            }
            return;
        };
        // Whether a header block ended in these bytes, and whether one that began in them
        // is still open at their end.
        let (mut ended, mut open) = (false, false);
        let H2Blocks {
            read,
            ends_block,
            block,
            last,
            ..
        } = &mut **blocks;
        read.pass(bytes, |event| match event {
            FrameEvent::Header(kind, flags, stream) => {
                if kind == HEADERS {
                    *block = stream;
                    open = true;
                }
                *ends_block = matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
            }
            FrameEvent::End if *ends_block => {
                *ends_block = false;
                *last = *block;
                (ended, open) = (true, false);
            }
            FrameEvent::End => {}
        });
        if ended {
            self.phase = Phase::Waiting;
        }
        if open {
            self.arm();
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

    /// The answer to a head not received by its deadline (`why`: which one): over HTTP/1.1
    /// Envoy's 408, counted on the listener's responses; over HTTP/2 a GOAWAY, when what h2
    /// wrote ends at a frame boundary.
    fn answer(&mut self, why: &'static str) {
        let mut bytes = Vec::with_capacity(256);
        if let Protocol::Http2(blocks) = &self.protocol {
            tracing::debug!(peer = %self.peer, stream = blocks.block, "header block not received in time ({why}): closing");
            if blocks.written.at_boundary() {
                let length = (8 + GOAWAY_DEBUG.len()) as u32;
                bytes.extend_from_slice(&length.to_be_bytes()[1..]);
                bytes.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
                bytes.extend_from_slice(&blocks.last.to_be_bytes());
                bytes.extend_from_slice(&0u32.to_be_bytes());
                bytes.extend_from_slice(GOAWAY_DEBUG);
            }
        } else {
            tracing::debug!(peer = %self.peer, "request refused with 408: {why}");
            self.listener.requests().count(408);
            let reply = Reply {
                status: StatusCode::REQUEST_TIMEOUT,
                location: None,
                message: why.to_string(),
                overloaded: false,
                flags: Default::default(),
            };
            reply_head(&reply, true, &mut bytes);
            // A gateway's `server: Kuma Gateway`, as on its other replies.
            if let Some(edits) = gateway_edits(Some(&*self.listener), true) {
                edits.apply(&mut bytes);
            }
            bytes.extend_from_slice(why.as_bytes());
        }
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
                Phase::Answering { reply, written } if *written < reply.len() => {
                    let rest = &reply[*written..];
                    match std::task::ready!(Pin::new(&mut *io).poll_write(cx, rest)) {
                        Ok(0) | Err(_) => self.phase = Phase::Ended,
                        Ok(n) => *written += n,
                    }
                }
                Phase::Answering { .. } => {
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
                Phase::Waiting | Phase::Armed { .. } | Phase::Ended => {
                    return Poll::Ready(Err(HeadTimedOut::io()))
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
            Phase::Armed { changes, .. }
                if !matches!(self.protocol, Protocol::Http2(_))
                    && self.streams.changes() != changes =>
            {
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

    /// Whether hyper may write now: not while the answer is going out (the task is woken
    /// by the answer's own I/O), never once it has.
    fn poll_writable(&self) -> Poll<io::Result<()>> {
        match self.phase {
            Phase::Answering { .. } | Phase::Lingering { .. } => Poll::Pending,
            Phase::Ended => Poll::Ready(Err(HeadTimedOut::io())),
            Phase::Waiting | Phase::Armed { .. } => Poll::Ready(Ok(())),
        }
    }

    /// Takes note of bytes hyper wrote (HTTP/2: where its frames end).
    fn wrote<'a>(&mut self, slices: impl Iterator<Item = &'a [u8]>, mut n: usize) {
        if let Protocol::Http2(blocks) = &mut self.protocol {
            for slice in slices {
                let part = &slice[..n.min(slice.len())];
                blocks.written.pass(part, |_| {});
                n -= part.len();
                if n == 0 {
                    break;
                }
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

impl<S: AsyncWrite + Unpin, L: HttpListener> AsyncWrite for HeadTimed<S, L> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(clock) = &mut this.clock else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        std::task::ready!(clock.poll_writable())?;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        clock.wrote(std::iter::once(buf), n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(clock) = &mut this.clock else {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        };
        std::task::ready!(clock.poll_writable())?;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        clock.wrote(bufs.iter().map(|b| &**b), n);
        Poll::Ready(Ok(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The events `Frames` reports for `chunks` passed one after the other.
    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            frames.pass(chunk, |event| {
                seen.push(match event {
                    FrameEvent::Header(kind, flags, stream) => format!("{kind}/{flags}/{stream}"),
                    FrameEvent::End => "end".to_string(),
                })
            });
        }
        seen
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        // SETTINGS (empty), HEADERS on stream 1 without END_HEADERS (2 bytes), CONTINUATION
        // with END_HEADERS (1 byte), the stream bit's reserved top bit ignored.
        let bytes: &[u8] = &[
            0, 0, 0, 4, 0, 0, 0, 0, 0, //
            0, 0, 2, 1, 1, 0, 0, 0, 1, 0x82, 0x86, //
            0, 0, 1, 9, 4, 0x80, 0, 0, 1, 0x84,
        ];
        let whole = events(&[bytes]);
        assert_eq!(whole, ["4/0/0", "end", "1/1/1", "end", "9/4/1", "end"]);
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(events(&[a, b]), whole, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events(&bytewise), whole);
        let mut frames = Frames::default();
        frames.pass(&bytes[..12], |_| {});
        assert!(!frames.at_boundary());
        frames.pass(&bytes[12..], |_| {});
        assert!(frames.at_boundary());
    }
}
