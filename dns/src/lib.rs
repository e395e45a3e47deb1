//! `bearing-dns`: the mesh DNS server a Bearing sidecar runs on port 15053 (UDP and TCP).
//!
//! iptables redirects the workload's DNS queries here. Names in the [`DnsTable`] (mesh
//! services and virtual-outbound hosts with their virtual IPs) are answered authoritatively;
//! other names under the mesh domain get NXDOMAIN; everything else is relayed to the real
//! resolvers (the proxy's own uid is not redirected, so it can reach them).
//!
//! ```no_run
//! # async fn example() -> Result<(), bearing_dns::Error> {
//! use std::sync::Arc;
//! use bearing_dns::{DnsServer, DnsServerConfig, DnsTable};
//!
//! let mut config = DnsServerConfig::default();
//! config.upstreams = bearing_dns::upstreams_from_resolv_conf(
//!     "/etc/resolv.conf".as_ref(),
//!     &config.listen,
//! )?;
//! let table = Arc::new(arc_swap::ArcSwap::from_pointee(DnsTable::new("mesh", [])));
//! let server = DnsServer::bind(config, table.clone()).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(server.run(shutdown.clone()));
//! // on every config change:
//! table.store(Arc::new(DnsTable::new("mesh", [])));
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

mod config;
mod forward;
mod metrics;
mod server;
mod table;
mod tcp;

pub use bearing_proxy_config::DnsRecord;
pub use config::{upstreams_from_resolv_conf, DnsServerConfig, DEFAULT_PORT};
pub use metrics::DnsMetrics;
pub use server::DnsServer;
pub use table::{DnsTable, Lookup};

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound.
    #[error("cannot bind DNS {protocol} socket on {address}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The resolv.conf could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The resolv.conf names no usable nameserver.
    #[error("{}: no nameserver line with a usable IP address", path.display())]
    NoNameservers {
        /// The file.
        path: PathBuf,
    },
    /// A socket failed while serving.
    #[error("DNS server stopped: {0}")]
    Stopped(String),
}
