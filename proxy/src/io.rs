//! Upstream TCP connects, and a stream wrapper that counts bytes into metrics as they pass.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::circuit::{Held, Occupancy, PoolMembership};

/// Connects to `target` within `timeout`, from `source` when given (inbound passthrough uses
/// 127.0.0.6), with TCP_NODELAY set: the one way the proxy opens upstream connections.
pub async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timeout after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Counts bytes read into `rx` and bytes written into `tx`: one relaxed atomic add per I/O
/// call, which keeps long-lived connections visible in the stats while they run. An upstream
/// connection also holds its cluster's connection unit (circuit breaking) until it closes.
pub struct Counted<S> {
    inner: S,
    rx: Counter,
    tx: Counter,
    /// Given back when the connection closes (held, never read).
    _unit: Option<Held<Arc<Occupancy>>>,
    /// Its place in its worker's connection pool (`max_connection_pools`), left when it
    /// closes (held, never read).
    _pool: Option<PoolMembership>,
    /// When the wrapper was made: an upstream connection's age (`max_connection_duration`).
    opened: tokio::time::Instant,
}

impl<S> Counted<S> {
    /// Wraps `inner`, counting into `rx` (read) and `tx` (written).
    pub fn new(inner: S, rx: Counter, tx: Counter) -> Self {
        Counted {
            inner,
            rx,
            tx,
            _unit: None,
            _pool: None,
            opened: tokio::time::Instant::now(),
        }
    }

    /// When this connection was opened (wrapped).
    pub fn opened(&self) -> tokio::time::Instant {
        self.opened
    }

    /// This connection, holding `unit` of its cluster's `max_connections` until it closes.
    pub fn holding(mut self, unit: Held<Arc<Occupancy>>) -> Self {
        self._unit = Some(unit);
        self
    }

    /// This connection, one of its worker's pool (`membership`) until it closes.
    pub fn in_pool(mut self, membership: Option<PoolMembership>) -> Self {
        self._pool = membership;
        self
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Counts `n` bytes read past this wrapper (zero-copy relaying).
    pub(crate) fn count_read(&self, n: usize) {
        self.rx.inc_by(n as u64);
    }

    /// Counts `n` bytes written past this wrapper (zero-copy relaying).
    pub(crate) fn count_written(&self, n: usize) {
        self.tx.inc_by(n as u64);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.rx.inc_by(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.tx.inc_by(n as u64);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.tx.inc_by(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Forgets tokio's readable readiness of `tcp` after a read that left its receive queue
/// empty, unless the peer's close was seen. Without this the next read of the socket first
/// fails with EAGAIN (the reactor learns of emptiness only from a failed read), and so does a
/// pooled connection's quiet check; with it both wait for epoll's next edge, as HAProxy
/// skips that read after a short one. Edge-triggered epoll reports bytes or a close that
/// arrive later, so nothing is missed.
pub fn forget_readable(tcp: &TcpStream) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let ready = std::pin::pin!(tcp.ready(tokio::io::Interest::READABLE));
    if let Poll::Ready(Ok(r)) = std::future::Future::poll(ready, &mut cx) {
        if !r.is_read_closed() {
            let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }
}

/// A stream running over one TCP connection, which can be reached to reset it.
pub trait TcpBacked {
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;

    /// The counted plain TCP connection, when no TLS wraps it (bytes can then be relayed
    /// with splice).
    fn plain(&self) -> Option<&Counted<TcpStream>> {
        None
    }
}

impl TcpBacked for Counted<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    fn plain(&self) -> Option<&Counted<TcpStream>> {
        Some(self)
    }
}

impl<S: TcpBacked> TcpBacked for bearing_tls::TlsStream<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<S: TcpBacked> TcpBacked for Box<S> {
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }

    fn plain(&self) -> Option<&Counted<TcpStream>> {
        (**self).plain()
    }
}

impl<L: TcpBacked, R: TcpBacked> TcpBacked for tokio_util::either::Either<L, R> {
    fn tcp(&self) -> &TcpStream {
        match self {
            tokio_util::either::Either::Left(l) => l.tcp(),
            tokio_util::either::Either::Right(r) => r.tcp(),
        }
    }

    fn plain(&self) -> Option<&Counted<TcpStream>> {
        match self {
            tokio_util::either::Either::Left(l) => l.plain(),
            tokio_util::either::Either::Right(r) => r.plain(),
        }
    }
}

impl TcpBacked for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// Makes closing `stream` send an RST, the TCP way of saying "nobody serves this".
pub fn reset(stream: &impl TcpBacked) {
    let _ = socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets (also for other modules' tests).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    /// Whether tokio reports `tcp` readable right now, without waiting.
    fn readable_now(tcp: &TcpStream) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn forgotten_readiness_comes_back_with_new_bytes_and_survives_a_close() {
        let (mut peer, tcp) = pair().await;
        peer.write_all(b"one").await.unwrap();
        tcp.readable().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(tcp.try_read(&mut buf).unwrap(), 3);
        assert!(readable_now(&tcp), "tokio still thinks there may be more");
        forget_readable(&tcp);
        assert!(!readable_now(&tcp), "forgotten without a syscall");
        peer.write_all(b"two").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), tcp.readable())
            .await
            .expect("new bytes make it readable again")
            .unwrap();
        assert_eq!(tcp.try_read(&mut buf).unwrap(), 3);

        // A close seen together with the last bytes is kept: the next read must find it.
        peer.write_all(b"end").await.unwrap();
        peer.shutdown().await.unwrap();
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        tcp.readable().await.unwrap();
        assert_eq!(tcp.try_read(&mut buf).unwrap(), 3);
        forget_readable(&tcp);
        assert!(readable_now(&tcp), "the close is not forgotten");
        assert_eq!(tcp.try_read(&mut buf).unwrap(), 0);
    }
}
