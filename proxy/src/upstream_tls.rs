//! The TLS contexts clusters originate with, keyed by the terms they were made from and
//! carried from one applied config to the next: a cluster whose TLS settings, protocol (its
//! ALPN) and mesh state (CA, this proxy's identity) hash and compare equal to a previous
//! cluster's takes that cluster's context, so an apply rebuilds only the contexts whose terms
//! changed (kuma-cp's 10k mTLS clusters cost one context each, once). Clusters with equal
//! terms in one config share one context too.

use std::collections::HashMap;
use std::sync::Arc;

use bearing_proxy_config::{Protocol, UpstreamTls};
use bearing_tls::TlsConnector;

use crate::mesh_tls::{MeshState, MeshTlsSet};

/// What an upstream TLS context is made from (the mesh state by identity).
#[derive(PartialEq, Eq, Hash)]
struct Terms {
    tls: UpstreamTls,
    protocol: Protocol,
    mesh: Option<MeshState>,
}

impl Terms {
    /// The terms of `tls` for a cluster speaking `protocol`, with the mesh states `meshes`.
    fn of(tls: &UpstreamTls, protocol: Protocol, meshes: &MeshTlsSet) -> Terms {
        let mesh = match tls {
            UpstreamTls::Mesh { mesh, .. } => meshes.get(mesh).map(MeshState::of),
            UpstreamTls::External { .. } => None,
        };
        Terms {
            tls: tls.clone(),
            protocol,
            mesh,
        }
    }
}

/// The upstream TLS contexts of one applied config, by the terms they were made from; an
/// entry is the error that kept its context from being built, for every cluster of those
/// terms.
#[derive(Default)]
pub struct UpstreamTlsContexts(HashMap<Terms, Arc<Result<TlsConnector, String>>>);

impl UpstreamTlsContexts {
    /// The connector of a cluster speaking `protocol` with TLS settings `tls`, with the mesh
    /// states of `meshes`: the one already made for these terms in this config or in
    /// `previous` (the config being replaced), else a new one. Kept in `self` for the next.
    pub fn connector(
        &mut self,
        previous: &UpstreamTlsContexts,
        tls: &UpstreamTls,
        protocol: Protocol,
        meshes: &MeshTlsSet,
    ) -> Result<TlsConnector, String> {
        let terms = Terms::of(tls, protocol, meshes);
        if let Some(made) = self.0.get(&terms) {
            return Result::clone(made);
        }
        let made = match previous.0.get(&terms) {
            Some(kept) => kept.clone(),
            None => Arc::new(meshes.upstream(tls, alpn(protocol))),
        };
        let connector = Result::clone(&made);
        self.0.insert(terms, made);
        connector
    }

    /// The entry made for these terms, to tell in tests whether it was kept or rebuilt.
    #[cfg(test)]
    pub(crate) fn made_for(
        &self,
        tls: &UpstreamTls,
        protocol: Protocol,
        meshes: &MeshTlsSet,
    ) -> Option<Arc<Result<TlsConnector, String>>> {
        self.0.get(&Terms::of(tls, protocol, meshes)).cloned()
    }
}

/// ALPN offered to TLS upstreams of a cluster speaking `protocol`.
fn alpn(protocol: Protocol) -> &'static [&'static [u8]] {
    match protocol {
        Protocol::Http => &[b"http/1.1"],
        Protocol::Http2 | Protocol::Grpc => &[b"h2"],
        Protocol::Tcp => &[],
    }
}
