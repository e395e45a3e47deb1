//! kuma-dp's side of the handshake with kuma-cp, for Bearing's control-plane config source.
//!
//! - [`request`]: the JSON body kuma-dp POSTs to `/bootstrap`, and the features Bearing
//!   advertises.
//! - [`client`]: the request itself, retried and with every error status explained.
//! - [`response`]: the CP's answer (Envoy bootstrap + sidecar settings) reduced to what the
//!   ADS client needs: the node, the ADS server and how to authenticate to it.
//! - [`tls`]: the verified TLS connection to the CP, shared by the bootstrap and the ADS client.

pub mod client;
pub mod request;
pub mod response;
pub mod tls;

pub use client::{BootstrapClient, BootstrapError, Bootstrapped, CpAddress, RetryPolicy, H2_ALPN};
pub use request::{ProxyIdentity, TokenSource, FEATURES};
pub use response::{AdsApi, AdsConfig, Authorization, CpBootstrap, Node};
pub use tls::{ConnectError, CpStream, CpTls, CpTrust};

#[cfg(test)]
mod tests {
    /// A file of Kuma's test vectors (`../shared/kuma-corpus` beside the workspace).
    pub(crate) fn corpus(path: &str) -> String {
        let full = format!(
            "{}/../../../shared/kuma-corpus/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }
}
