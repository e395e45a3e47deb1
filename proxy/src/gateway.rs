//! Builtin gateway listeners, the network filter in front of the connection manager:
//! [`GatewayRuntime`] terminates a gateway's TLS with a certificate per hostname (SNI), relays
//! TCP and TLS connections to weighted backends, and holds the listener's connection limit;
//! an HTTP connection then goes to the connection manager (`crate::hcm`), whose requests
//! the listener's routes (`crate::router::HttpRoutes`) decide.
//!
//! Kuma's gateway HTTP defaults (its Envoy config for builtin gateways) that apply here:
//! requests get 15 s for response headers (the routes' timeout); the connection manager's
//! timeouts are the listener's (`Listener::downstream_timeouts` and `stream_idle_timeout`,
//! Kuma's 0.5 s request head, 5 s stream idle and 300 s connection idle unless a MeshTimeout
//! says otherwise); the router appends the client's address to `x-forwarded-for`, normalises
//! paths, refuses header names with `_`, removes `x-kuma-tags` and answers with `server: Kuma
//! Gateway`.
//!
//! HTTP/1.1 requests go over the byte codec ([`crate::hcm::byte_codec`]) when every backend
//! speaks HTTP/1.1: the head is read into an `http` request for the router and the routed
//! request is written back as bytes, so the rest of the exchange costs what a sidecar's does.
//! There a keep-alive connection may idle for the connection idle timeout between requests.
//! HTTP/2 and whatever else the byte codec does not carry go to hyper, whose HTTP/1.1 gives a
//! head the stream idle timeout from the moment a connection waits for a request, so it also
//! closes keep-alive connections idle that long.
//!
//! A gateway listener with compression (Kuma's gzip compressor, on every HTTP listener)
//! compresses responses as Envoy does ([`crate::hcm::compress`]): hyper serves the clients
//! that accept gzip (the byte codec hands their connection over at the first such request),
//! while the byte codec keeps serving the others, adding only `Vary: Accept-Encoding`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bearing_gateway::Router;
use bearing_proxy_config::{
    CrossMesh, GatewayCertificate, GatewayListener, GatewayProtocol, TlsParams,
};
use bearing_tls::{Negotiated as _, TlsAcceptor};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use crate::access_log::ConnectionLog;
use crate::io::Counted;
use crate::mesh_tls::{MeshState, MeshTlsSet};
use crate::router::HttpRoutes;
use crate::stats::{ListenerStats, Stats};
use crate::tcp_proxy::{serve_tcp_logged, TcpProxying};
use crate::transport::{offers_kuma_alpn, peek_sni, Admission, Transported};
use crate::upstream::ClusterRuntime;

/// One gateway listener of the applied config, ready to serve.
pub struct GatewayRuntime {
    /// Its hosts' routes and backends (also the listener's [`HttpRoutes`]).
    routes: Arc<HttpRoutes>,
    /// HTTPS and TLS terminate: the acceptor choosing a certificate by SNI.
    tls: Option<Arc<TlsAcceptor>>,
    /// What `tls` was made from: a later config with equal terms keeps the acceptor.
    tls_terms: TlsTerms,
    protocol: GatewayProtocol,
    /// The index of the `*` host, which a ClientHello without SNI goes to.
    wildcard: Option<usize>,
    limit: Option<u32>,
    /// Connections open on the listener, counted across reloads: a config keeping the
    /// listener keeps the count.
    open: Arc<AtomicU32>,
}

/// What a gateway listener's TLS acceptor is made from: its protocol, each host's name (the
/// SNI picks a certificate by host, in this order) and certificate, and for a cross-mesh
/// listener its meshes' CAs and the identity's mesh state (by identity: a rebuilt one is a
/// change).
#[derive(PartialEq)]
struct TlsTerms {
    protocol: GatewayProtocol,
    hosts: Vec<(String, Option<GatewayCertificate>)>,
    cross_mesh: Option<(CrossMesh, Option<MeshState>)>,
    params: Option<TlsParams>,
}

impl TlsTerms {
    /// The terms of `listener`'s TLS with the mesh states `mesh_tls`.
    fn of(listener: &GatewayListener, mesh_tls: &MeshTlsSet) -> TlsTerms {
        let hosts = listener.hosts.iter();
        TlsTerms {
            protocol: listener.protocol,
            hosts: hosts
                .map(|h| (h.hostname.clone(), h.certificate.clone()))
                .collect(),
            cross_mesh: listener.cross_mesh.as_ref().map(|cross| {
                let mesh = mesh_tls.get(&cross.identity_mesh);
                (cross.clone(), mesh.map(MeshState::of))
            }),
            params: listener.tls_params.clone(),
        }
    }
}

impl GatewayRuntime {
    /// Builds the router and TLS of `listener`, keeping the clusters its routes name.
    /// `previous` is the gateway this listener had in the config being replaced: its open
    /// connections stay counted against the limit, and its TLS acceptor is kept when made
    /// from the same terms.
    pub fn build(
        listener: &GatewayListener,
        clusters: &HashMap<String, Arc<ClusterRuntime>>,
        mesh_tls: &MeshTlsSet,
        previous: Option<&GatewayRuntime>,
        limited: impl FnOnce() -> Counter,
    ) -> Result<GatewayRuntime, String> {
        let routes = Arc::new(HttpRoutes::gateway(listener, clusters, limited)?);
        let router = routes.router().clone();
        let tls_terms = TlsTerms::of(listener, mesh_tls);
        let kept = previous.filter(|p| p.tls_terms == tls_terms);
        let tls = match (kept, &listener.cross_mesh, listener.protocol) {
            (Some(kept), _, _) => kept.tls.clone(),
            (None, Some(cross), _) => Some(Arc::new(cross_mesh_acceptor(
                cross,
                listener.tls_params.as_ref(),
                mesh_tls,
            )?)),
            (None, None, GatewayProtocol::Https) => {
                Some(Arc::new(acceptor(listener, router, &[b"h2", b"http/1.1"])?))
            }
            (None, None, GatewayProtocol::TlsTerminate) => {
                Some(Arc::new(acceptor(listener, router, &[])?))
            }
            (None, None, _) => None,
        };
        Ok(GatewayRuntime {
            routes,
            tls,
            tls_terms,
            protocol: listener.protocol,
            wildcard: wildcard_host(listener),
            limit: listener.connection_limit,
            open: previous.map_or_else(Default::default, |p| p.open.clone()),
        })
    }

    /// Its routes, which the listener's HTTP requests take.
    pub fn routes(&self) -> &Arc<HttpRoutes> {
        &self.routes
    }

    /// The host a TLS connection whose ClientHello names `sni` is served by.
    fn host_by_sni(&self, sni: Option<&str>) -> Option<usize> {
        host_by_sni(self.routes.router(), self.wildcard, sni)
    }

    /// Takes a connection slot; `None` when the connection limit is reached.
    pub(crate) fn admit(&self) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot(self.open.clone());
        match self.limit {
            Some(limit) if open > limit => None,
            _ => Some(slot),
        }
    }
}

/// An open connection counted against the listener's limit; released on drop.
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TLS acceptor of a terminating listener: each host's certificate, chosen by SNI.
fn acceptor(
    listener: &GatewayListener,
    router: Arc<Router>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, String> {
    // Each host's certificate, by host index: an index into `keys`.
    let mut keys = Vec::new();
    let mut key_of_host = Vec::with_capacity(listener.hosts.len());
    for h in &listener.hosts {
        let key = match &h.certificate {
            Some(c) => {
                let key = bearing_tls::certified_key(&c.cert_chain_pem, &c.key_pem)
                    .map_err(|e| format!("host {}: {}: {e}", h.hostname, c.origin))?;
                keys.push(key);
                Some(keys.len() - 1)
            }
            None => None,
        };
        key_of_host.push(key);
    }
    let wildcard = wildcard_host(listener);
    let select = move |sni: Option<&str>| {
        host_by_sni(&router, wildcard, sni)
            .and_then(|host| key_of_host.get(host).copied().flatten())
    };
    let params = listener.tls_params.as_ref();
    bearing_tls::gateway_acceptor(&keys, select, alpn, params).map_err(|e| e.to_string())
}

/// The index of a listener's `*` host, which serves a ClientHello without SNI.
fn wildcard_host(listener: &GatewayListener) -> Option<usize> {
    listener.hosts.iter().position(|h| h.hostname == "*")
}

/// The host a ClientHello naming `sni` is served by, as Envoy picks a chain by its
/// `server_names`: the host of that name (exact, then wildcards, then `*`); without SNI only
/// the `*` host (`wildcard`), a chain matched by no server name.
fn host_by_sni(router: &Router, wildcard: Option<usize>, sni: Option<&str>) -> Option<usize> {
    match sni {
        Some(name) => router.host_for(name),
        None => wildcard,
    }
}

/// The mesh mTLS acceptor of a cross-mesh listener: the gateway's identity in its mesh, and
/// clients of every mesh's CA, with the listener's TLS parameters.
fn cross_mesh_acceptor(
    cross: &CrossMesh,
    params: Option<&TlsParams>,
    mesh_tls: &MeshTlsSet,
) -> Result<TlsAcceptor, String> {
    let rt = mesh_tls.get(&cross.identity_mesh).ok_or_else(|| {
        format!(
            "mesh {:?} has no usable mTLS certificate",
            cross.identity_mesh
        )
    })?;
    let pems: Vec<&str> = cross.client_ca_pems.iter().map(String::as_str).collect();
    bearing_tls::cross_mesh_acceptor(&pems, rt.identity(), params).map_err(|e| e.to_string())
}

/// Serves one connection of a gateway listener: TCP and TLS (passthrough or terminated)
/// are relayed to their backend here; an HTTP connection (decrypted for HTTPS) is handed
/// back to be served with the place it holds under the listener's connection limit (TCP in
/// as the listener's `proxying` says: connection attempts and idle timeout). `None` when the
/// connection was served here, or refused.
pub(crate) async fn serve(
    stats: &Stats,
    stream: Counted<TcpStream>,
    (name, listener, proxying, log): (&str, &ListenerStats, TcpProxying, Option<ConnectionLog<'_>>),
    gateway: &GatewayRuntime,
    peer: SocketAddr,
) -> Option<(Slot, Transported<Counted<TcpStream>>)> {
    let named = (listener, name, peer);
    let Some(slot) = gateway.admit() else {
        listener.errors.inc();
        tracing::warn!(listener = %name, %peer, "refused: connection limit reached");
        crate::io::reset(&stream);
        return None;
    };
    match gateway.protocol {
        GatewayProtocol::Http if gateway.tls.is_none() => {
            return Some((slot, Transported::Plain(stream)))
        }
        GatewayProtocol::Tcp => match gateway.routes.tcp_cluster(0) {
            Some(cluster) => {
                serve_tcp_logged(stream, (cluster, proxying), named, |_| true, log).await
            }
            None => refuse(&stream, (name, listener), peer, "no TCP route"),
        },
        GatewayProtocol::TlsPassthrough => {
            let sni = match peek_sni(stream.get_ref()).await {
                Ok(sni) => sni,
                Err(reason) => {
                    refuse(&stream, (name, listener), peer, &reason);
                    return None;
                }
            };
            let cluster = gateway
                .host_by_sni(sni.as_deref())
                .and_then(|h| gateway.routes.tcp_cluster(h));
            match cluster {
                Some(c) => serve_tcp_logged(stream, (c, proxying), named, |_| true, log).await,
                None => refuse(
                    &stream,
                    (name, listener),
                    peer,
                    &format!("no chain matches SNI {sni:?}"),
                ),
            }
        }
        GatewayProtocol::Http | GatewayProtocol::Https | GatewayProtocol::TlsTerminate => {
            let Some(acceptor) = &gateway.tls else {
                refuse(&stream, (name, listener), peer, "no TLS configuration");
                return None;
            };
            // A cross-mesh listener's chain is matched by ALPN `kuma`: a client not offering
            // it matches no chain, and Envoy closes its connection.
            if gateway.tls_terms.cross_mesh.is_some() {
                match offers_kuma_alpn(stream.get_ref()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let why =
                            "no filter chain matches: the ClientHello does not offer ALPN kuma";
                        refuse(&stream, (name, listener), peer, why);
                        return None;
                    }
                    Err(why) => {
                        refuse(&stream, (name, listener), peer, &why);
                        return None;
                    }
                }
            }
            let tls = match acceptor.accept(stream, name, peer).await {
                Ok(tls) => tls,
                Err(e) => {
                    stats.count_tls_handshake_error(name);
                    tracing::info!(listener = %name, %peer, "TLS refused: {e}");
                    return None;
                }
            };
            if gateway.protocol != GatewayProtocol::TlsTerminate {
                return Some((slot, Transported::Tls(tls, Admission::Plaintext)));
            }
            let sni = tls.server_name().map(str::to_string);
            match gateway
                .host_by_sni(sni.as_deref())
                .and_then(|h| gateway.routes.tcp_cluster(h))
            {
                Some(c) => serve_tcp_logged(tls, (c, proxying), named, |_| true, log).await,
                None => {
                    tracing::info!(listener = %name, %peer, ?sni, "closed: no route for this SNI")
                }
            }
        }
    }
    None
}

/// Refuses a connection of listener `name` with a reset, counted and logged with `why`.
fn refuse(
    stream: &Counted<TcpStream>,
    (name, listener): (&str, &ListenerStats),
    peer: SocketAddr,
    why: &str,
) {
    listener.errors.inc();
    tracing::info!(listener = %name, %peer, "refused: {why}");
    crate::io::reset(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_frees_a_slot_when_a_connection_ends() {
        let listener = GatewayListener {
            protocol: GatewayProtocol::Tcp,
            hosts: Vec::new(),
            tags: Default::default(),
            connection_limit: Some(2),
            cross_mesh: None,
            tls_params: None,
            compression: None,
        };
        let gw = GatewayRuntime::build(
            &listener,
            &HashMap::new(),
            &MeshTlsSet::default(),
            None,
            Counter::default,
        )
        .unwrap();
        let first = gw.admit();
        let second = gw.admit();
        assert!(first.is_some() && second.is_some());
        assert!(gw.admit().is_none(), "a third connection is over the limit");
        drop(first);
        assert!(gw.admit().is_some());
    }

    #[test]
    fn a_reload_keeps_the_connection_count_and_the_acceptor_of_equal_terms() {
        let https = |name: &str| {
            let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            GatewayListener {
                protocol: GatewayProtocol::Https,
                hosts: vec![bearing_proxy_config::GatewayHost {
                    hostname: "*".into(),
                    certificate: Some(GatewayCertificate {
                        origin: "inline".into(),
                        cert_chain_pem: cert.cert.pem(),
                        key_pem: cert.signing_key.serialize_pem(),
                    }),
                    http_routes: Vec::new(),
                    tcp_backends: Vec::new(),
                }],
                tags: Default::default(),
                connection_limit: Some(1),
                cross_mesh: None,
                tls_params: None,
                compression: None,
            }
        };
        let (clusters, meshes) = (HashMap::new(), MeshTlsSet::default());
        let listener = https("example.com");
        let first =
            GatewayRuntime::build(&listener, &clusters, &meshes, None, Counter::default).unwrap();
        let open = first.admit();
        assert!(open.is_some());

        // Other tags: the open connection still counts, the acceptor is the same.
        let mut retagged = listener.clone();
        retagged.tags.insert("version".into(), "2".into());
        let second = GatewayRuntime::build(
            &retagged,
            &clusters,
            &meshes,
            Some(&first),
            Counter::default,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&first.open, &second.open));
        assert!(
            second.admit().is_none(),
            "the limit counts the connection opened before"
        );
        let (a, b) = (first.tls.as_ref().unwrap(), second.tls.as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b));
        drop(open);
        assert!(second.admit().is_some());

        // Another certificate: a new acceptor, the same count.
        let recertified = https("example.org");
        let third = GatewayRuntime::build(
            &recertified,
            &clusters,
            &meshes,
            Some(&second),
            Counter::default,
        )
        .unwrap();
        assert!(!Arc::ptr_eq(b, third.tls.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&second.open, &third.open));
        // A listener new to the config starts from zero.
        let fresh = GatewayRuntime::build(&recertified, &clusters, &meshes, None, Counter::default)
            .unwrap();
        assert!(!Arc::ptr_eq(&third.open, &fresh.open));
    }
}
