//! Plain TCP relayed with splice(2): the kernel moves the bytes from one socket to the other
//! through a pipe, so they never cross into user space.
//!
//! Written here because tokio's `copy_bidirectional` reads into and writes from a user-space
//! buffer: two copies of every byte, which capped TCP throughput at about half the direct
//! figure. No maintained crate offers splice on tokio sockets with readiness handling; the
//! loop is short: fill the pipe from the source when it is readable, drain the pipe into the
//! destination when it is writable, half-close the destination at end of stream.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::idle::{touch, Activity};
use crate::io::Counted;

/// Capacity asked for each pipe (the kernel default is 64 KiB): a larger pipe means fewer
/// splice calls on bulk transfers. 256 KiB moved as much per second as 1 MiB here, and
/// keeps within the 64 MiB of pipe buffers an unprivileged user gets by default
/// (`/proc/sys/fs/pipe-user-pages-soft`) with 256 transfers under way at once.
const PIPE_SIZE: usize = 256 * 1024;

/// Empty pipes kept for reuse. Past this many, a returned pipe is closed.
const POOL_LIMIT: usize = 64;

/// Empty pipes, ready for the next transfer. A connection holds a pipe only while bytes are
/// moving, so idle connections cost no descriptors or pipe buffers, and short ones no
/// pipe2/fcntl/close calls.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A kernel pipe used as the buffer between two sockets.
struct Pipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A pooled empty pipe, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(pipe);
        }
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A smaller pipe still works (the size may be capped by the pipe limits).
        let capacity = fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read_end,
            write_end,
            capacity,
        })
    }

    /// Returns this pipe, which must be empty, to the pool.
    fn recycle(self) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_LIMIT {
            pool.push(self);
        }
    }
}

/// Copies both ways between `a` and `b` until both directions end (each end of stream is
/// passed on as a half-close); returns the bytes moved a→b and b→a. Each splice that moves
/// bytes touches `activity` (an idle timeout's watch), when given.
pub async fn copy_bidirectional(
    a: &Counted<TcpStream>,
    b: &Counted<TcpStream>,
    activity: Option<&Activity>,
) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b, activity), one_way(b, a, activity))
}

async fn one_way(
    from: &Counted<TcpStream>,
    to: &Counted<TcpStream>,
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let total = pump(from, to, None, activity).await?;
    socket2::SockRef::from(to.get_ref()).shutdown(Shutdown::Write)?;
    Ok(total)
}

/// Moves exactly `len` bytes from `from` to `to` (an HTTP body of known length, on the byte
/// path): none beyond them is read, so `from` can carry another message afterwards. An
/// `UnexpectedEof` error when `from` ends first. Touches `activity` as bytes move.
pub async fn copy_exact(
    from: &Counted<TcpStream>,
    to: &Counted<TcpStream>,
    len: u64,
    activity: Option<&Activity>,
) -> io::Result<()> {
    let moved = pump(from, to, Some(len), activity).await?;
    if moved < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the source closed after {moved} of {len} bytes"),
        ));
    }
    Ok(())
}

/// Moves bytes from `from` to `to` until `from` ends or `limit` bytes have moved; returns how
/// many moved.
async fn pump(
    from: &Counted<TcpStream>,
    to: &Counted<TcpStream>,
    limit: Option<u64>,
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let (source, sink) = (from.get_ref(), to.get_ref());
    let mut total = 0u64;
    loop {
        if limit == Some(total) {
            return Ok(total);
        }
        source.readable().await?;
        // Dropped, not recycled, if this fails or is cancelled with bytes still inside.
        let pipe = Pipe::take()?;
        loop {
            let want = limit.map_or(pipe.capacity, |l| {
                usize::try_from(l - total).map_or(pipe.capacity, |left| left.min(pipe.capacity))
            });
            if want == 0 {
                pipe.recycle();
                return Ok(total);
            }
            let moved = source.try_io(Interest::READABLE, || {
                move_bytes(source.as_fd(), &pipe.write_end, want, flags)
            });
            let n = match moved {
                Ok(0) => {
                    pipe.recycle();
                    return Ok(total);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            from.count_read(n);
            touch(activity);
            let mut queued = n;
            while queued > 0 {
                let m = sink
                    .async_io(Interest::WRITABLE, || {
                        move_bytes(&pipe.read_end, sink.as_fd(), queued, flags)
                    })
                    .await?;
                if m == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the destination accepted no bytes",
                    ));
                }
                queued -= m;
                to.count_written(m);
                touch(activity);
                total += m as u64;
            }
        }
        pipe.recycle();
    }
}

/// One splice call; EAGAIN comes back as `WouldBlock` (`async_io` then waits for readiness
/// and calls again; `try_io` clears the readiness).
fn move_bytes(
    from: impl AsFd,
    to: impl AsFd,
    len: usize,
    flags: SpliceFFlags,
) -> io::Result<usize> {
    splice(from, None, to, None, len, flags).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::pair;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        // client <-> [down | proxy | up] <-> server
        let (mut client, down) = pair().await;
        let (up, mut server) = pair().await;
        let (rx, tx) = (Counter::default(), Counter::default());
        let down = Counted::new(down, rx.clone(), tx.clone());
        let up = Counted::new(up, Counter::default(), Counter::default());
        let relay = tokio::spawn(async move { copy_bidirectional(&down, &up, None).await });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == payload, "the bytes arrived changed");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let (ab, ba) = relay.await.unwrap().unwrap();
        assert_eq!((ab, ba), (3_000_000, 22));
        assert_eq!((rx.get(), tx.get()), (3_000_000, 22));
        let pooled = POOL.lock().unwrap().len();
        assert!(pooled >= 1, "the emptied pipes go back to the pool");
    }

    #[tokio::test]
    async fn copies_exactly_the_length_and_leaves_the_rest() {
        let (mut origin, up) = pair().await;
        let (down, mut client) = pair().await;
        let up = Counted::new(up, Counter::default(), Counter::default());
        let down = Counted::new(down, Counter::default(), Counter::default());
        let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = body.clone();
        sent.extend_from_slice(b"NEXT");
        origin.write_all(&sent).await.unwrap();
        copy_exact(&up, &down, body.len() as u64, None)
            .await
            .unwrap();
        let mut got = vec![0; body.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == body, "the body arrived changed");
        // What follows the body stays in the source for the next message.
        let mut next = [0; 4];
        up.get_ref().try_read(&mut next).unwrap();
        assert_eq!(&next, b"NEXT");

        origin.write_all(b"short").await.unwrap();
        drop(origin);
        let err = copy_exact(&up, &down, 10, None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
