//! Mesh mTLS at run time: per mesh, the CA, this proxy's renewing leaf certificate, the
//! acceptor inbound listeners terminate with, and the one client context its connectors to
//! every destination identity share; and, per set of TLS parameters listeners and clusters
//! ask for (kuma-cp's MeshTLS), one more acceptor and client context, built when a config
//! first asks for them. Kept across reloads while the mesh's settings are unchanged, so a
//! reload neither re-issues certificates nor disturbs open connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use bearing_proxy_config::{MeshTls, SpiffeMatcher, TlsParams, UpstreamTls, Verification};
use bearing_tls::{
    Identity, MeshCa, MeshClient, Renewer, ServerVerification, SpiffeTrust, TlsAcceptor,
    TlsConnector, TlsError,
};
use tokio::task::JoinHandle;

/// One mesh's TLS state.
pub struct MeshTlsRuntime {
    /// The settings it was built from (a change rebuilds it).
    pub config: MeshTls,
    identity: Arc<Identity>,
    /// What peers are verified against.
    trust: Trust,
    /// What inbound listeners of this mesh terminate mTLS with.
    pub server: TlsAcceptor,
    /// The client context every outbound of this mesh shares, whatever its destination.
    client: MeshClient,
    /// The acceptors and client contexts of the TLS parameters asked for so far, each built
    /// once (at apply time, never per connection) and shared by every listener or cluster
    /// asking for the same parameters.
    with_params: Mutex<HashMap<TlsParams, (TlsAcceptor, Arc<MeshClient>)>>,
    renewal: JoinHandle<()>,
}

/// How a mesh's peers are verified.
enum Trust {
    /// Chained to the mesh CA.
    Ca(Arc<MeshCa>),
    /// A MeshIdentity's trust: by their trust domain's bundle, clients under a prefix.
    Spiffe(Arc<SpiffeTrust>, String),
}

impl Trust {
    /// The acceptor and client context of `identity` under this trust, with `params`.
    fn contexts(
        &self,
        identity: &Arc<Identity>,
        params: Option<&TlsParams>,
    ) -> Result<(TlsAcceptor, MeshClient), TlsError> {
        Ok(match self {
            Trust::Spiffe(trust, prefix) => (
                bearing_tls::spiffe_acceptor(trust.clone(), identity.clone(), prefix, params)?,
                bearing_tls::spiffe_client(trust.clone(), identity.clone(), params)?,
            ),
            Trust::Ca(ca) => (
                bearing_tls::mesh_acceptor(ca, identity.clone(), params)?,
                bearing_tls::mesh_client(ca, identity.clone(), params)?,
            ),
        })
    }
}

impl Drop for MeshTlsRuntime {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl MeshTlsRuntime {
    /// Loads the CA and this proxy's leaf: the one issued ahead of time, or one it issues
    /// itself with the CA key; starts renewing it (or, for a leaf issued ahead of time,
    /// warning before it expires).
    pub fn build(config: &MeshTls) -> Result<MeshTlsRuntime, TlsError> {
        // A MeshIdentity's trust: peers verified by their trust domain's bundle, and this
        // proxy's leaf carrying its own SPIFFE id rather than one per service.
        let spiffe = match config.spiffe_trust.is_empty() {
            true => None,
            false => Some(Arc::new(SpiffeTrust::from_pems(&config.spiffe_trust)?)),
        };
        let (ca, identity) = match (&config.identity_pem, &config.ca_key_pem) {
            (Some(pem), _) => {
                let ca = Arc::new(MeshCa::from_cert_pem(&config.ca_cert_pem)?);
                let renewer = match config.renewed_by_control_plane {
                    true => Renewer::ControlPlane,
                    false => Renewer::Operator,
                };
                let services = match spiffe {
                    Some(_) => &[][..],
                    None => &config.services[..],
                };
                let id = Identity::pre_issued(ca.clone(), &config.mesh, services, pem, renewer)?;
                (ca, id)
            }
            (None, Some(key)) => {
                let ca = Arc::new(MeshCa::from_pem(&config.ca_cert_pem, key)?);
                let lifetime = config.leaf_lifetime;
                let id = Identity::new(ca.clone(), &config.mesh, &config.services, lifetime)?;
                (ca, id)
            }
            (None, None) => return Err(TlsError::NoCaKey),
        };
        let trust = match spiffe {
            Some(trust) => {
                let prefix = config
                    .client_prefix
                    .clone()
                    .unwrap_or_else(|| format!("spiffe://{}/", config.mesh));
                Trust::Spiffe(trust, prefix)
            }
            None => Trust::Ca(ca),
        };
        let (server, client) = trust.contexts(&identity, None)?;
        let renewal = bearing_tls::spawn_renewal(identity.clone());
        Ok(MeshTlsRuntime {
            config: config.clone(),
            identity,
            trust,
            server,
            client,
            with_params: Mutex::default(),
            renewal,
        })
    }

    /// The acceptor inbound listeners asking for `params` terminate mTLS with: the mesh's own
    /// without, else the one built for these parameters (built now if none asked before).
    pub fn server(&self, params: Option<&TlsParams>) -> Result<TlsAcceptor, TlsError> {
        match params {
            None => Ok(self.server.clone()),
            Some(params) => self.contexts_with(params).map(|(server, _)| server),
        }
    }

    /// The acceptor and client context for `params`, built once per mesh state. The lock is
    /// taken when a config is applied, never on a connection.
    fn contexts_with(
        &self,
        params: &TlsParams,
    ) -> Result<(TlsAcceptor, Arc<MeshClient>), TlsError> {
        let mut made = self
            .with_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(contexts) = made.get(params) {
            return Ok(contexts.clone());
        }
        let (server, client) = self.trust.contexts(&self.identity, Some(params))?;
        let contexts = (server, Arc::new(client));
        made.insert(params.clone(), contexts.clone());
        Ok(contexts)
    }

    /// This proxy's renewing identity in the mesh.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// The connector (no SNI yet) that presents this proxy's certificate and accepts only a
    /// server presenting a SPIFFE id one of `expected` accepts, on the mesh's one client
    /// context, or the one of `params`.
    pub fn client(
        &self,
        expected: &[SpiffeMatcher],
        params: Option<&TlsParams>,
    ) -> Result<TlsConnector, TlsError> {
        match params {
            None => self.client.expecting(expected),
            Some(params) => self.contexts_with(params)?.1.expecting(expected),
        }
    }
}

/// A mesh TLS state as a term other state is made from: equal, and hashed, by being the
/// same state (a rebuilt one, with another CA or other services, is another term), which
/// it keeps alive while used as a key.
#[derive(Clone)]
pub struct MeshState(Arc<MeshTlsRuntime>);

impl MeshState {
    /// The term for `state`.
    pub fn of(state: &Arc<MeshTlsRuntime>) -> MeshState {
        MeshState(state.clone())
    }
}

impl PartialEq for MeshState {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MeshState {}

impl std::hash::Hash for MeshState {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

/// The TLS state of every mesh the applied config names, rebuilt only where it changed.
#[derive(Default)]
pub struct MeshTlsSet {
    meshes: HashMap<String, Arc<MeshTlsRuntime>>,
}

impl MeshTlsSet {
    /// The state for `configs`, reusing entries of `self` whose settings are unchanged. A mesh
    /// whose certificate cannot be issued is logged, left out (its TLS listeners refuse
    /// connections, its TLS clusters fail to connect) and reported in `failures` under
    /// `mesh <name>`, which keeps the proxy not ready.
    pub fn update<'c>(
        &self,
        configs: impl IntoIterator<Item = &'c MeshTls>,
        failures: &mut BTreeMap<String, String>,
    ) -> MeshTlsSet {
        let mut meshes = HashMap::new();
        for c in configs {
            match self.meshes.get(&c.mesh).filter(|old| old.config == *c) {
                Some(old) => {
                    meshes.insert(c.mesh.clone(), old.clone());
                }
                None => match MeshTlsRuntime::build(c) {
                    Ok(rt) if c.identity_pem.is_some() => {
                        let expires_in_secs = rt
                            .identity
                            .expires_at()
                            .duration_since(std::time::SystemTime::now())
                            .map_or(0, |left| left.as_secs());
                        let renewed_by = match c.renewed_by_control_plane {
                            true => "the control plane",
                            false => "bearing ca issue",
                        };
                        tracing::info!(mesh = %c.mesh, backend = %c.backend, services = ?c.services, expires_in_secs, renewed_by, "mesh mTLS certificate loaded; this proxy cannot renew it");
                        meshes.insert(c.mesh.clone(), Arc::new(rt));
                    }
                    Ok(rt) => {
                        tracing::info!(mesh = %c.mesh, backend = %c.backend, services = ?c.services, "mesh mTLS certificate issued");
                        meshes.insert(c.mesh.clone(), Arc::new(rt));
                    }
                    Err(e) => {
                        let message = format!(
                            "mTLS backend {:?}: no certificate for services {:?}: {e}",
                            c.backend, c.services
                        );
                        tracing::error!(mesh = %c.mesh, "mesh mTLS unavailable: {message}");
                        failures.insert(format!("mesh {}", c.mesh), message);
                    }
                },
            }
        }
        MeshTlsSet { meshes }
    }

    /// Every mesh identity this proxy presents.
    pub fn identities(&self) -> Vec<Arc<Identity>> {
        self.meshes.values().map(|rt| rt.identity()).collect()
    }

    /// The state of `mesh`, if it could be built.
    pub fn get(&self, mesh: &str) -> Option<&Arc<MeshTlsRuntime>> {
        self.meshes.get(mesh)
    }

    /// The connector a cluster's TLS settings call for, sending the SNI they name byte for
    /// byte (Kuma's tags or hashed form, as Kuma's Envoy sends it).
    pub fn upstream(&self, tls: &UpstreamTls, alpn: &[&[u8]]) -> Result<TlsConnector, String> {
        match tls {
            UpstreamTls::Mesh {
                mesh,
                sni,
                identities,
                server_ca_pem,
                params,
            } => {
                let rt = self
                    .get(mesh)
                    .ok_or_else(|| format!("mesh {mesh:?} has no usable mTLS certificate"))?;
                match server_ca_pem {
                    None => rt.client(identities, params.as_ref()),
                    Some(ca) => bearing_tls::cross_mesh_connector(
                        ca,
                        rt.identity(),
                        identities,
                        params.as_ref(),
                    ),
                }
                .and_then(|c| c.with_sni(sni))
                .map_err(|e| e.to_string())
            }
            UpstreamTls::External {
                server_name,
                ca_pem,
                client_cert_pem,
                client_key_pem,
                verification,
                allow_renegotiation,
                params,
            } => {
                let client = client_cert_pem.as_deref().zip(client_key_pem.as_deref());
                let verification = match verification {
                    Verification::Secured => ServerVerification::Secured,
                    Verification::SkipSan => ServerVerification::SkipSan,
                    Verification::SkipAll => ServerVerification::SkipAll,
                };
                bearing_tls::external_connector(
                    server_name,
                    ca_pem.as_deref(),
                    client,
                    verification,
                    alpn,
                    params.as_ref(),
                )
                .map(|c| match allow_renegotiation {
                    true => c.allowing_renegotiation(),
                    false => c,
                })
                .map_err(|e| e.to_string())
            }
        }
    }
}

/// Mesh `default`'s settings with CA `ca` (key included) for a proxy of service `web`.
#[cfg(test)]
pub(crate) fn test_config(ca: &bearing_tls::MeshCa, permissive: bool) -> MeshTls {
    MeshTls {
        mesh: "default".into(),
        backend: "ca-1".into(),
        ca_cert_pem: ca.cert_pem().into(),
        ca_key_pem: ca.key_pem().map(str::to_string),
        identity_pem: None,
        services: vec!["web".into()],
        permissive,
        leaf_lifetime: std::time::Duration::from_secs(3600),
        renewed_by_control_plane: false,
        spiffe_trust: Default::default(),
        client_prefix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_tls::{parse_client_hello, ClientHello};

    /// Listeners and clusters asking for the same TLS parameters share one acceptor and one
    /// client context, built once per mesh state; without parameters they take the mesh's
    /// own and build nothing.
    #[tokio::test]
    async fn tls_parameters_build_one_set_of_contexts_per_mesh_state() {
        use bearing_proxy_config::TlsVersion;
        let ca = MeshCa::generate("default").unwrap();
        let set = MeshTlsSet::default().update([&test_config(&ca, false)], &mut BTreeMap::new());
        let rt = set.get("default").unwrap();
        let built = || rt.with_params.lock().unwrap().len();
        let tls13 = TlsParams {
            min_version: TlsVersion::V1_3,
            max_version: TlsVersion::V1_3,
            cipher_suites: "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
            ecdh_curves: "X25519:P-256".into(),
        };
        let cluster = |sni: &str, params: Option<&TlsParams>| UpstreamTls::Mesh {
            mesh: "default".into(),
            sni: sni.into(),
            identities: vec![SpiffeMatcher::Exact("spiffe://default/backend".into())],
            server_ca_pem: None,
            params: params.cloned(),
        };
        set.upstream(&cluster("a{mesh=default}", None), &[])
            .unwrap();
        rt.server(None).unwrap();
        assert_eq!(built(), 0);
        set.upstream(&cluster("a{mesh=default}", Some(&tls13)), &[])
            .unwrap();
        set.upstream(&cluster("b{mesh=default}", Some(&tls13)), &[])
            .unwrap();
        rt.server(Some(&tls13)).unwrap();
        assert_eq!(built(), 1);
        let tls12 = TlsParams {
            max_version: TlsVersion::V1_2,
            ..tls13.clone()
        };
        rt.server(Some(&tls12)).unwrap();
        assert_eq!(built(), 2);
    }

    /// A mesh cluster's connector sends the SNI the cluster names byte for byte, as Kuma's
    /// Envoy does (the `sni` of its UpstreamTlsContext: tags form for `kuma.io/service`
    /// outbounds, hashed form for MeshServices), with ALPN `kuma`.
    #[tokio::test]
    async fn mesh_clusters_send_kumas_sni_byte_for_byte() {
        let ca = MeshCa::generate("default").unwrap();
        let set = MeshTlsSet::default().update([&test_config(&ca, false)], &mut BTreeMap::new());
        for sni in [
            "backend{mesh=default}",
            "db{mesh=default,role=replica}",
            "a601e0c00295a9fbe.backend.80.default.ms",
        ] {
            let tls = UpstreamTls::Mesh {
                mesh: "default".into(),
                sni: sni.into(),
                identities: vec![SpiffeMatcher::Exact("spiffe://default/backend".into())],
                server_ca_pem: None,
                params: None,
            };
            let connector = set.upstream(&tls, &[]).unwrap();
            let hello = connector.first_flight().unwrap();
            assert_eq!(
                parse_client_hello(&hello),
                ClientHello::Parsed {
                    sni: Some(sni),
                    alpn_kuma: true
                },
                "{sni}"
            );
        }
    }
}
