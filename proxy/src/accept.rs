//! The accept stage: listening sockets bound for the workers (one per worker in a
//! SO_REUSEPORT group, or one shared when descriptors are short), and the loop that accepts
//! connections on one of them and hands each to the next stage.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts connections on `socket` (bound at `address`) until `stop` is cancelled, handing
/// each to `accepted`. A failed accept is counted by `failed` and backed off rather than
/// spun on; out of descriptors, the waiting connection is closed rather than left in the
/// backlog.
pub(crate) async fn run(
    address: SocketAddr,
    socket: TcpListener,
    stop: CancellationToken,
    failed: impl Fn(),
    accepted: impl Fn(TcpStream, SocketAddr),
) {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.accept() => r,
        };
        match result {
            Ok((stream, peer)) => accepted(stream, peer),
            Err(e) => {
                if crate::descriptors::is_exhausted(&e) && crate::descriptors::shed_one(&socket) {
                    tracing::warn!(%address, "accept failed: {e}; a connection was closed unserved");
                } else {
                    tracing::error!(%address, "accept failed: {e}");
                }
                failed();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Binds `addresses`, in order, each with one socket per worker (`per_address`). Many sockets
/// (a sidecar with a thousand outbounds) are bound on as many threads as there are cores: 1000
/// listeners took 6 ms on one thread, 4 on two.
pub(crate) fn bind_all(
    addresses: &[SocketAddr],
    per_address: usize,
) -> Vec<std::io::Result<Vec<std::net::TcpListener>>> {
    const PER_THREAD: usize = 64;
    let bind = |address: &SocketAddr| bind_for_workers(*address, per_address);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(addresses.len() / PER_THREAD);
    if threads <= 1 {
        return addresses.iter().map(bind).collect();
    }
    let per = addresses.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = addresses
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(bind).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .zip(addresses.chunks(per))
            .flat_map(|(part, chunk)| {
                part.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|_| Err(std::io::Error::other("binding thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// How many sockets each listener gets: one per worker (a SO_REUSEPORT group), unless the
/// listeners' sockets would then take more than half the descriptor limit, which is kept for
/// connections (two descriptors per proxied one). Then one, accepted on by one worker, which
/// hands connections to the others as `Workers::place` balances them (10k outbounds with 2
/// workers took all of a 20000 limit).
pub(crate) fn sockets_per_listener(workers: usize, listeners: usize) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    if workers > 1 && (listeners as u64).saturating_mul(workers as u64) > limit / 2 {
        1
    } else {
        workers
    }
}

/// Binds `workers` listening sockets on `address`: one, or a SO_REUSEPORT group the kernel
/// spreads new connections over (by their addresses' hash). Either way a port another socket
/// holds without SO_REUSEPORT fails to bind.
fn bind_for_workers(
    address: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..workers).map(|_| bind(address, workers > 1)).collect()
}

/// Binds a listening socket with SO_REUSEADDR (restarts do not wait for TIME_WAIT), and
/// SO_REUSEPORT when `shared` by several workers.
fn bind(address: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    if address.is_ipv6() {
        // `[::]:15001` must not also claim IPv4, which `0.0.0.0:15001` serves.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The host has no IPv6 (disabled kernel module or sysctl).
pub(crate) fn is_family_unavailable(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_get_a_socket_per_worker_while_descriptors_allow() {
        assert_eq!(sockets_per_listener(1, 5), 1);
        assert_eq!(sockets_per_listener(2, 5), 2);
        // Listeners whose sockets would take more than half the limit: one socket each.
        assert_eq!(sockets_per_listener(2, usize::MAX / 4), 1);
    }
}
