//! Transparent proxying: connections iptables redirected to the capture ports (15001 outbound,
//! 15006 inbound) are handed to the listener their original destination names, or passed
//! through to that destination when no listener claims it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use bearing_proxy_config::{Direction, Entry, NoHeaders, ResponseFlags, TransparentProxy};
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::access_log::{Began, ListenerLog, LogFiles};
use crate::filter_chain::ListenerRuntime;
use crate::io::Counted;
use crate::stats::{ListenerStats, Stats};

/// Source address of inbound passthrough connections, as in Kuma: the iptables rules return
/// loopback traffic from it early, so the application's reply is not captured again.
pub const INBOUND_PASSTHROUGH_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// IPv6 counterpart of [`INBOUND_PASSTHROUGH_SOURCE_V4`] (`transparent-proxy install` puts
/// `::6/128` on the loopback interface).
pub const INBOUND_PASSTHROUGH_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Time allowed to connect to a passthrough destination.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One bound capture socket: which side it captures and what happens to connections no
/// listener claims. Named as Kuma names its capture listeners (`outbound:passthrough:ipv4`).
pub struct CapturePort {
    /// `outbound:passthrough:ipv4`, `inbound:passthrough:ipv6`, …
    pub name: String,
    /// Outbound (15001) or inbound (15006).
    pub direction: Direction,
    /// Whether unclaimed connections go to their original destination.
    pub passthrough: bool,
    /// Metrics of unclaimed connections.
    pub stats: ListenerStats,
    /// Where passed-through connections are logged (`TransparentProxy::*_access_logs`).
    pub(crate) access_log: Option<Arc<ListenerLog>>,
}

impl CapturePort {
    /// The capture sockets a transparent proxy config asks for, by address.
    pub(crate) fn for_config(
        tp: &TransparentProxy,
        stats: &Stats,
        files: &LogFiles,
    ) -> Vec<(SocketAddr, CapturePort)> {
        let mut families = vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), "ipv4")];
        if tp.ipv6 {
            families.push((IpAddr::V6(Ipv6Addr::UNSPECIFIED), "ipv6"));
        }
        let sides = [
            (
                Direction::Outbound,
                tp.outbound_port,
                tp.outbound_passthrough,
                files.listener(&tp.outbound_access_logs, stats),
            ),
            (
                Direction::Inbound,
                tp.inbound_port,
                true,
                files.listener(&tp.inbound_access_logs, stats),
            ),
        ];
        let mut ports = Vec::new();
        for (ip, family) in families {
            for (direction, port, passthrough, access_log) in sides.clone() {
                let side = match direction {
                    Direction::Outbound => "outbound",
                    Direction::Inbound => "inbound",
                };
                let name = format!("{side}:passthrough:{family}");
                let stats = stats.listener(&name);
                ports.push((
                    SocketAddr::new(ip, port),
                    CapturePort {
                        name,
                        direction,
                        passthrough,
                        stats,
                        access_log,
                    },
                ));
            }
        }
        ports
    }
}

/// Where a captured connection goes.
pub enum Route {
    /// To a listener of the config (explicit outbound, direct access, inbound).
    Listener(Arc<ListenerRuntime>),
    /// To its original destination, from `source` when set.
    Passthrough {
        /// The original destination.
        target: SocketAddr,
        /// Local address to connect from (127.0.0.6 for inbound passthrough).
        source: Option<IpAddr>,
    },
    /// Refused, with the reason for the log.
    Refuse(String),
}

/// The destination a redirected connection had before iptables rewrote it.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let a = getsockopt(stream, sockopt::OriginalDst)?;
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(a.sin_port),
        )))
    } else {
        let a = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(a.sin6_port),
            0,
            0,
        )))
    }
}

/// Copies a passthrough connection both ways, resetting the client if the destination
/// cannot be reached.
pub async fn serve_passthrough(
    mut down: Counted<TcpStream>,
    port: &CapturePort,
    target: SocketAddr,
    source: Option<IpAddr>,
    peer: SocketAddr,
) {
    let began = port.access_log.as_ref().map(|_| Began::now());
    // Bytes received and sent downstream, and the flags, for the log.
    let mut ended = (0, 0, ResponseFlags::default());
    match crate::io::connect(target, source, PASSTHROUGH_CONNECT_TIMEOUT).await {
        Ok(mut up) => {
            let size = crate::tcp_proxy::TCP_COPY_BUFFER;
            let copied = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, size, size);
            match copied.await {
                Ok((received, sent)) => (ended.0, ended.1) = (received, sent),
                Err(e) => {
                    port.stats.errors.inc();
                    tracing::debug!(listener = %port.name, %peer, %target, "connection ended: {e}");
                }
            }
        }
        Err(e) => {
            port.stats.errors.inc();
            tracing::warn!(listener = %port.name, %peer, %target, "passthrough connect failed: {e}; resetting connection");
            crate::io::reset(&down);
            ended.2.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            ended.2.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
        }
    }
    if let (Some(log), Some(began)) = (&port.access_log, began) {
        let (start, duration) = began.times();
        log.log(&Entry {
            route_kri: None,
            start,
            duration,
            protocol: None,
            response_code: 0,
            flags: ended.2,
            bytes_received: ended.0,
            bytes_sent: ended.1,
            upstream_host: Some(target),
            // Kuma's passthrough clusters are named as its capture listeners.
            upstream_cluster: Some(&port.name),
            downstream_remote: peer,
            downstream_local: target,
            request: &NoHeaders,
            response: &NoHeaders,
        });
    }
}

/// The inbound passthrough source address of `target`'s family.
pub fn inbound_passthrough_source(target: &SocketAddr) -> IpAddr {
    match target {
        SocketAddr::V4(_) => IpAddr::V4(INBOUND_PASSTHROUGH_SOURCE_V4),
        SocketAddr::V6(_) => IpAddr::V6(INBOUND_PASSTHROUGH_SOURCE_V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::LogFiles;
    use bearing_proxy_config::{AccessLog, LogFormat};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One connection through `port` to `target`: the client sends `ping` and reads to the end.
    async fn pass(port: &CapturePort, target: SocketAddr) -> Vec<u8> {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (down, peer) = front.accept().await.unwrap();
        let down = Counted::new(down, Default::default(), Default::default());
        let talk = async move {
            let _ = client.write_all(b"ping").await;
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            got
        };
        let ((), got) = tokio::join!(serve_passthrough(down, port, target, None, peer), talk);
        got
    }

    #[tokio::test]
    async fn passed_through_connections_are_logged_with_their_destination() {
        let dir = std::env::temp_dir().join(format!("bearing-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passthrough.log").to_string_lossy().into_owned();
        let format = "%RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %DOWNSTREAM_LOCAL_ADDRESS%\n";
        let tp = TransparentProxy {
            outbound_port: 15001,
            inbound_port: 15006,
            ipv6: false,
            outbound_passthrough: true,
            outbound_access_logs: vec![AccessLog {
                path: path.clone(),
                format: LogFormat::text(format, false).unwrap(),
                filter: None,
            }],
            inbound_access_logs: Vec::new(),
        };
        let ports = CapturePort::for_config(&tp, &Stats::new(), &LogFiles::default());
        let logged = |p: &CapturePort| p.access_log.is_some();
        assert!(ports
            .iter()
            .all(|(_, p)| logged(p) == (p.direction == Direction::Outbound)));
        let outbound = &ports
            .iter()
            .find(|(_, p)| p.direction == Direction::Outbound)
            .unwrap()
            .1;
        // A destination answering `pong!` to `ping`, then closing.
        let destination = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = destination.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = destination.accept().await.unwrap();
            let mut ping = [0; 4];
            let _ = s.read_exact(&mut ping).await;
            let _ = s.write_all(b"pong!").await;
        });
        assert_eq!(pass(outbound, target).await, b"pong!");
        // A destination nobody listens on.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = gone.local_addr().unwrap();
        drop(gone);
        assert!(pass(outbound, nobody).await.is_empty());
        // The last user of the file gone, its writer writes what is pending and ends.
        drop(ports);
        let mut text = String::new();
        for _ in 0..250 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            text,
            format!(
                "- {target} outbound:passthrough:ipv4 4 5 {target}\nUF,URX {nobody} outbound:passthrough:ipv4 0 0 {nobody}\n"
            )
        );
    }
}
