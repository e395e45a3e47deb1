//! Config from kuma-cp (`bearing run --cp-address`): kuma-dp's flags for the control-plane
//! path, and the bootstrap handshake that yields where and how to open the ADS stream.
//!
//! [`bootstrap`] is the stage before ADS: it builds kuma-dp's `/bootstrap` request from the
//! flags, performs it (retrying and logging as kuma-dp does) and returns the CP's answer with
//! the TLS trust the ADS client reuses. [`start_ads`] then runs the ADS client for good: every
//! pushed state is translated into a `ProxyConfig` and published on the same `ConfigStatus`
//! channel the directory store uses ([`CpSink`]), so the runtime, admin API and DNS do not
//! know which source they serve.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{bail, Context};
use bearing_bootstrap::request::{system_ca_path, MetricsResources};
use bearing_bootstrap::{
    Authorization, BootstrapClient, Bootstrapped, CpAddress, CpTls, CpTrust, ProxyIdentity,
    RetryPolicy, TokenSource,
};
use bearing_control::{template, ConfigStatus, Loaded, Rejected};
use bearing_envoy_config::{translate, Nack, NodeInfo, ResourceSet};
use bearing_proxy_config::{MetricsApplication, ProxyConfig};
use bearing_xds::{ConfigSink, Rejection, ResourceState, ResourceType, TypeResources};
use tokio::sync::watch;

use crate::args::{CpArgs, ProxyType, RunArgs};

/// Performs kuma-dp's bootstrap with kuma-cp: builds the request from the flags, POSTs it to
/// `<cp>/bootstrap` (retried every 3 s for up to 5 minutes, each retry's reason logged) and
/// returns the CP's answer (the node, the ADS server and the trust to reach it with) with the
/// identity the request gave.
pub async fn bootstrap(args: &RunArgs) -> anyhow::Result<(Bootstrapped, ProxyIdentity)> {
    let cp_text = args.cp.cp_address.as_deref().unwrap_or_default();
    let cp = CpAddress::parse(cp_text).map_err(anyhow::Error::msg)?;
    let trust = trust(&args.cp)?;
    let identity = identity(args, &trust)?;
    make_work_dir(args)?;
    let tokens = TokenSource {
        file: args.cp.dataplane_token_file.clone(),
        inline: args.cp.dataplane_token.clone(),
    };
    if matches!(trust, CpTrust::SkipVerify) {
        tracing::warn!("--skip-verify: the control plane's certificate is not verified");
    }
    tracing::info!(cp = %cp.url, mesh = %identity.mesh, name = %identity.name, proxy_type = %identity.proxy_type, trust = %trust.describe(), "fetching the bootstrap from the control plane");
    let retry = RetryPolicy {
        interval: args.cp.retry_backoff,
        max: args.cp.retry_max_duration,
        ..RetryPolicy::default()
    };
    let client = BootstrapClient::new(cp, trust, identity.clone(), tokens, retry)
        .map_err(anyhow::Error::msg)?;
    let done = client
        .fetch(
            |error, wait| tracing::info!(retry_in = ?wait, "bootstrap not done, retrying: {error}"),
        )
        .await?;
    tracing::info!(
        node = %done.config.node.id,
        ads = %format!("{}:{}", done.config.ads.host, done.config.ads.port),
        api = ?done.config.ads.api,
        tls = done.config.ads.tls.is_some(),
        "bootstrap received from the control plane"
    );
    Ok((done, identity))
}

/// Types a config is not translated without: until each has come once, a push is ACKed and
/// kept but nothing is applied (Envoy's initial fetch starts with clusters, then listeners).
/// Endpoints and Secrets are not on the list: kuma-cp sends no Secret at all for a mesh
/// without mTLS (seen with kuma-cp 2.14), and a listener or cluster naming a Secret that has
/// not come waits for it instead, as does a listener naming a Cluster that is not there (see
/// `bearing_envoy_config::Nack::awaiting`).
const INITIAL_TYPES: [ResourceType; 2] = [ResourceType::Cluster, ResourceType::Listener];

/// The ADS consumer of `bearing run --cp-address`: keeps the state's resources decoded per
/// type ([`DecodedState`]), translates them and publishes the `ProxyConfig` on the config
/// status channel (→ ACK); a state that does not translate is logged (one line per NACK),
/// recorded as `last_rejected` and refused (→ NACK), the last good config serving on.
pub struct CpSink {
    /// Which proxy the resources are for.
    pub node: NodeInfo,
    /// The channel the runtime, admin API and DNS follow.
    pub status: watch::Sender<ConfigStatus>,
    /// The resources of the last offered state, decoded, and what their translation gave.
    decoded: DecodedState,
    /// The application metrics endpoints of the bootstrap, merged into the Prometheus
    /// endpoint's scrape of every config published.
    metrics_applications: Vec<MetricsApplication>,
}

impl ConfigSink for CpSink {
    fn offer(&mut self, state: &ResourceState, changed: ResourceType) -> Result<(), Rejection> {
        self.decoded.update(state);
        let received: Vec<ResourceType> = state.iter().map(|(t, _)| t).collect();
        if let Some(missing) = INITIAL_TYPES.iter().find(|t| !received.contains(t)) {
            // What came is checked all the same: an undecodable Cluster is NACKed now, not
            // ACKed and kept (Envoy validates each type as it comes).
            let nacks = self.decoded.decode_nacks();
            if !nacks.is_empty() {
                return Err(self.reject(&nacks, changed));
            }
            tracing::debug!(%changed, %missing, "initial fetch: kept, not applied before every type came");
            return Ok(());
        }
        match self.decoded.translate(&self.node) {
            Translated::Config(config) => {
                self.publish(*config, state);
                Ok(())
            }
            Translated::Unchanged => Ok(()),
            // Envoy keeps such listeners and clusters warming; kuma-cp pushes Secrets last, and
            // removes a Cluster (CDS) before the Listener using it (LDS).
            Translated::Waiting(waiting) => {
                tracing::info!(%changed, ?waiting, "kept, not applied until the resources it names come (or the listeners naming them go)");
                Ok(())
            }
            Translated::Rejected(nacks) => Err(self.reject(&nacks, changed)),
        }
    }
}

impl CpSink {
    /// A sink for `node` publishing on `status`; the Prometheus endpoint of each config
    /// scrapes `metrics_applications` too.
    pub fn new(
        node: NodeInfo,
        status: watch::Sender<ConfigStatus>,
        metrics_applications: Vec<MetricsApplication>,
    ) -> CpSink {
        CpSink {
            node,
            status,
            decoded: DecodedState::default(),
            metrics_applications,
        }
    }

    /// Publishes a translated config (when it differs from the applied one), with the
    /// bootstrap's application metrics endpoints on its Prometheus endpoint (xDS does not
    /// carry them: kuma-cp hands them to kuma-dp in the bootstrap).
    fn publish(&self, mut config: ProxyConfig, state: &ResourceState) {
        if let Some(prometheus) = config.kuma_endpoints.prometheus.as_mut() {
            prometheus.applications = self.metrics_applications.clone();
        }
        let versions = ResourceType::ALL
            .iter()
            .filter(|t| !state.version(**t).is_empty())
            .map(|t| format!("{t}={}", state.version(*t)))
            .collect::<Vec<_>>()
            .join(" ");
        self.status.send_if_modified(|s| {
            let same = s
                .applied
                .as_ref()
                .is_some_and(|a| a.config.version == config.version);
            if !same {
                tracing::info!(version = %config.version, cp_versions = %versions, "config applied");
                s.applied = Some(Loaded {
                    config: Arc::new(config),
                    ignored: Vec::new(),
                    not_enforced: Vec::new(),
                });
            }
            !same
        });
    }

    /// Logs each NACK, records them as the last rejected config and returns the rejection the
    /// client NACKs `changed` with: the first NACK's resource and field, and every NACK in the
    /// reason, so `error_detail` names them all.
    fn reject(&self, nacks: &[Nack], changed: ResourceType) -> Rejection {
        let problems: Vec<String> = nacks.iter().map(describe_nack).collect();
        for problem in &problems {
            tracing::error!(%changed, "config from the control plane rejected: {problem}");
        }
        tracing::error!(
            "config from the control plane rejected with {} problem(s) (NACK {changed}); still serving version {}",
            problems.len(),
            self.status.borrow().serving_version()
        );
        self.status
            .send_modify(|s| s.last_rejected = Some(Rejected::now(problems.clone())));
        let (first, rest) = match nacks.split_first() {
            Some(split) => split,
            None => {
                return Rejection::new(changed.to_string(), "", "refused without a reason");
            }
        };
        let mut reason = first.reason.clone();
        for more in rest.iter().map(describe_nack) {
            reason.push_str("; ");
            reason.push_str(&more);
        }
        Rejection::new(resource_label(first), first.field.clone(), reason)
    }
}

/// `Listener inbound:10.0.0.1:80`: a NACK's resource as its type's short name and its name.
fn resource_label(nack: &Nack) -> String {
    let short = nack.type_url.rsplit('.').next().unwrap_or(&nack.type_url);
    format!("{short} {}", nack.resource)
}

/// One NACK as one line: `<Type> <name>: <field>: <reason>`.
fn describe_nack(nack: &Nack) -> String {
    format!("{}: {}: {}", resource_label(nack), nack.field, nack.reason)
}

/// What translating a decoded state gave.
#[derive(Clone, Debug)]
enum Translated {
    /// A config, new since the resources last changed (publish it).
    Config(Box<ProxyConfig>),
    /// The same resources as the config translated before (already published).
    Unchanged,
    /// Only Secrets not come yet are missing (ACK, keep, do not apply): their reasons.
    Waiting(Vec<String>),
    /// NACKs: what does not decode or translate.
    Rejected(Vec<Nack>),
}

/// The resources of the state last offered, decoded per type, so that a push of one type
/// decodes that type only, and a push that changes no resource (kuma-cp, as go-control-plane,
/// pushes every type again with the new version on any change) is not translated again. Each
/// type is checked against the state offered, not against what was offered before: after a
/// NACK the ADS client offers its last ACKed set of that type again, which is decoded again,
/// so nothing of a refused push outlives it.
#[derive(Default)]
struct DecodedState {
    /// Every type's resources, decoded, as `sources` holds them.
    set: ResourceSet,
    /// Per type: the resources `set` holds decoded (shared with the ADS client's state), and
    /// a NACK for each that did not decode.
    sources: BTreeMap<ResourceType, (Arc<TypeResources>, Vec<Nack>)>,
    /// What translating `set` gave, until a type's resources change.
    last: Option<Translated>,
}

impl DecodedState {
    /// Brings the decoded resources to `state`'s: a type whose set is another (by pointer,
    /// then by content) is decoded again; a type whose resources are the same keeps them.
    fn update(&mut self, state: &ResourceState) {
        for resource_type in ResourceType::ALL {
            let offered = state.shared(resource_type);
            let cached = self.sources.get_mut(&resource_type);
            match (offered, cached) {
                (None, None) => continue,
                (Some(new), Some((old, _))) if Arc::ptr_eq(new, old) => continue,
                (Some(new), Some((old, _))) if new.resources == old.resources => {
                    *old = new.clone();
                    continue;
                }
                _ => {}
            }
            let resources = offered.into_iter().flat_map(|r| {
                r.resources
                    .iter()
                    .map(|(name, any)| (name.as_str(), any.value.as_slice()))
            });
            let nacks = self.set.replace_type(resource_type.type_url(), resources);
            match offered {
                Some(new) => self.sources.insert(resource_type, (new.clone(), nacks)),
                None => self.sources.remove(&resource_type),
            };
            self.last = None;
        }
    }

    /// Every resource of the state that did not decode (or is of a type Bearing does not
    /// use), as NACKs.
    fn decode_nacks(&self) -> Vec<Nack> {
        self.sources
            .values()
            .flat_map(|(_, nacks)| nacks.iter().cloned())
            .collect()
    }

    /// Translates the decoded resources for `node`, or gives what the last translation gave
    /// when no type changed since.
    fn translate(&mut self, node: &NodeInfo) -> Translated {
        if let Some(last) = &self.last {
            return last.clone();
        }
        let nacks = self.decode_nacks();
        let result = match nacks.is_empty() {
            true => translate(&self.set, node),
            false => Err(nacks),
        };
        let translated = match result {
            Ok(config) => Translated::Config(Box::new(config)),
            Err(nacks) if nacks.iter().all(|n| n.awaiting) => {
                Translated::Waiting(nacks.into_iter().map(|n| n.reason).collect())
            }
            Err(nacks) => Translated::Rejected(nacks),
        };
        self.last = Some(match &translated {
            Translated::Config(_) => Translated::Unchanged,
            other => other.clone(),
        });
        translated
    }
}

/// Starts the ADS client on this runtime for the bootstrap's ADS server (TLS with the
/// bootstrap's trust when the bootstrap says so, else plaintext HTTP/2); it runs for the life
/// of the process, reconnecting with back-off, and publishes every translated config on
/// `status`.
pub fn start_ads(
    done: &Bootstrapped,
    identity: &ProxyIdentity,
    status: watch::Sender<ConfigStatus>,
) -> anyhow::Result<()> {
    let ads = &done.config.ads;
    let scheme = if ads.tls.is_some() { "https" } else { "http" };
    let host = if ads.host.contains(':') && !ads.host.starts_with('[') {
        format!("[{}]", ads.host)
    } else {
        ads.host.clone()
    };
    let url = format!("{scheme}://{host}:{}", ads.port);
    let endpoint = bearing_xds::cp_endpoint(&url)
        .with_context(|| format!("ADS server {url} from the bootstrap"))?;
    let channel = match done.ads_tls().map_err(anyhow::Error::msg)? {
        Some(tls) => endpoint.connect_with_connector_lazy(CpConnector {
            tls,
            host: ads.host.clone(),
            port: ads.port,
        }),
        None => endpoint.connect_lazy(),
    };
    let metadata = serde_json::Value::Object(done.config.node.metadata.clone());
    let node = bearing_xds::kuma_node(
        &done.config.node.id,
        &done.config.node.cluster,
        bearing_xds::struct_from_json(&metadata),
    );
    let tokens = ads_token(done);
    let node_info = NodeInfo {
        name: identity.name.clone(),
        mesh: identity.mesh.clone(),
        proxy_type: identity.proxy_type.clone(),
        source: format!("control plane {} (ADS {url})", done.cp.url),
    };
    let applications = metrics_applications(&done.config.sidecar.metrics.aggregate);
    let mut sink = CpSink::new(node_info, status, applications);
    tracing::info!(ads = %url, node = %node.id, "subscribing to the control plane over ADS");
    let mut client = bearing_xds::AdsClient::new(channel, node, tokens);
    tokio::spawn(async move { client.run(&mut sink).await });
    Ok(())
}

/// The bootstrap's `kumaSidecarConfiguration.metrics.aggregate` entries (kuma-cp already left
/// out the disabled ones and gave each the Dataplane's address when it has none), in their
/// order; an entry that names no address or a port out of range is logged and left out.
fn metrics_applications(
    aggregate: &[bearing_bootstrap::response::Aggregate],
) -> Vec<MetricsApplication> {
    aggregate
        .iter()
        .filter_map(|entry| {
            let port = u16::try_from(entry.port).ok().filter(|p| *p != 0);
            match (entry.address.is_empty(), port) {
                (false, Some(port)) => Some(MetricsApplication {
                    name: entry.name.clone(),
                    address: entry.address.clone(),
                    port,
                    path: entry.path.clone(),
                }),
                _ => {
                    tracing::error!(name = %entry.name, address = %entry.address, port = entry.port, "kumaSidecarConfiguration.metrics.aggregate: the entry needs an address and a port in 1..65535; its metrics are not scraped");
                    None
                }
            }
        })
        .collect()
}

/// The token of the ADS stream: the one given to Bearing (the file re-read per stream, so a
/// rotated token is used on reconnect), else what the bootstrap's ADS cluster carries.
fn ads_token(done: &Bootstrapped) -> bearing_xds::TokenSource {
    match (
        &done.tokens.inline,
        &done.tokens.file,
        &done.config.ads.authorization,
    ) {
        (Some(token), _, _) if !token.trim().is_empty() => {
            bearing_xds::TokenSource::Fixed(token.clone())
        }
        (_, Some(file), _) => bearing_xds::TokenSource::File(file.clone()),
        (_, None, Authorization::Token(token)) => bearing_xds::TokenSource::Fixed(token.clone()),
        (_, None, Authorization::File(file)) => bearing_xds::TokenSource::File(file.clone()),
        _ => bearing_xds::TokenSource::None,
    }
}

/// The ADS channel's connector: TCP and TLS to the bootstrap's ADS server through
/// [`CpTls`] (the CP's certificate verified as for the bootstrap, ALPN h2).
#[derive(Clone)]
struct CpConnector {
    tls: CpTls,
    host: String,
    port: u16,
}

/// A connection [`CpConnector`] is making.
type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    hyper_util::rt::TokioIo<bearing_bootstrap::CpStream>,
                    bearing_bootstrap::ConnectError,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for CpConnector {
    type Response = hyper_util::rt::TokioIo<bearing_bootstrap::CpStream>;
    type Error = bearing_bootstrap::ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Connecting {
        let connector = self.clone();
        Box::pin(async move {
            let stream = connector
                .tls
                .connect(&connector.host, connector.port)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// How the CP's certificate is verified: `KUMA_CONTROL_PLANE_CA_CERT` (PEM) wins over
/// `--ca-cert-file`, as in kuma-dp; neither: the system roots.
fn trust(cp: &CpArgs) -> anyhow::Result<CpTrust> {
    if cp.skip_verify {
        return Ok(CpTrust::SkipVerify);
    }
    if let Some(pem) = cp.ca_cert.as_deref().filter(|p| !p.trim().is_empty()) {
        return CpTrust::from_pem(pem, "KUMA_CONTROL_PLANE_CA_CERT").map_err(anyhow::Error::msg);
    }
    if let Some(path) = &cp.ca_cert_file {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--ca-cert-file {}: cannot read", path.display()))?;
        return CpTrust::from_pem(&pem, &format!("--ca-cert-file {}", path.display()))
            .map_err(anyhow::Error::msg);
    }
    Ok(CpTrust::System)
}

/// The proxy's work dir (see [`CpArgs::work_dir`]): the given one, else this process's own.
fn work_dir(args: &RunArgs) -> PathBuf {
    args.cp.work_dir.clone().unwrap_or_else(own_work_dir)
}

/// Makes the work dir if missing, with mode 0711 as kuma-dp makes it (others may reach the
/// sockets inside but not list them); a given dir that exists is used as it is.
fn make_work_dir(args: &RunArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = work_dir(args);
    let context = || format!("cannot make the work dir {}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .with_context(context)?;
    if args.cp.work_dir.is_none() {
        // Ours: 0711 whatever the umask.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .with_context(context)?;
    }
    Ok(())
}

/// The work dir made for this process when none is given.
fn own_work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kuma-dp-{}", std::process::id()))
}

/// Removes the work dir made for this process (none when `--work-dir` was given), at exit.
pub fn remove_own_work_dir(args: &RunArgs) {
    if args.cp.cp_address.is_some() && args.cp.work_dir.is_none() {
        let dir = own_work_dir();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), "cannot remove the work dir: {e}");
            }
        }
    }
}

/// What the request tells the CP about this proxy, from the flags as kuma-dp reads them: the
/// resource (rendered with --dataplane-var) gives mesh and name, and then --name/--mesh may
/// not be given; without a resource, --name (else `POD_NAME.POD_NAMESPACE` on Kubernetes) and
/// --mesh name a proxy the CP already has.
pub fn identity(args: &RunArgs, trust: &CpTrust) -> anyhow::Result<ProxyIdentity> {
    let vars = template::parse_vars(&args.dataplane_var).map_err(anyhow::Error::msg)?;
    let text = match (&args.dataplane_file, &args.dataplane) {
        (Some(path), _) => Some((
            std::fs::read_to_string(path)
                .with_context(|| format!("--dataplane-file {}: cannot read", path.display()))?,
            format!("--dataplane-file {}", path.display()),
        )),
        (None, Some(inline)) => Some((inline.clone(), "--dataplane".to_string())),
        (None, None) => None,
    };
    let (mesh, name, resource) = match text {
        Some((text, origin)) => {
            let (mesh, name, json) = resource_json(&text, &vars, args.proxy_type)
                .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            if args.name.is_some() || args.mesh.is_some() {
                bail!("--name and --mesh cannot be given with a dataplane definition ({origin}): mesh and name are read from it");
            }
            (mesh, name, Some(json))
        }
        None => {
            let name = match (&args.name, std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) {
                (Some(n), _, _) if !n.is_empty() => n.clone(),
                (_, Ok(pod), Ok(namespace)) => format!("{pod}.{namespace}"),
                _ => bail!("--cp-address needs this proxy's resource (--dataplane-file, --dataplane) or its --name"),
            };
            (args.mesh.clone().unwrap_or_default(), name, None)
        }
    };
    let mut dynamic_metadata = BTreeMap::new();
    if let Ok(host_ip) = std::env::var("HOST_IP") {
        if !host_ip.is_empty() {
            dynamic_metadata.insert("HOST_IP".to_string(), host_ip);
        }
    }
    let ca_cert = match trust {
        CpTrust::Roots { certs, .. } => certs
            .iter()
            .filter_map(|c| c.to_pem().ok())
            .map(|pem| String::from_utf8_lossy(&pem).into_owned())
            .collect(),
        _ => String::new(),
    };
    Ok(ProxyIdentity {
        mesh,
        name,
        proxy_type: proxy_type_name(args.proxy_type).to_string(),
        resource,
        ca_cert,
        dynamic_metadata,
        dns_port: u32::from(args.cp.dns_envoy_port),
        readiness_port: u32::from(args.cp.readiness_port),
        workdir: work_dir(args).display().to_string(),
        metrics: MetricsResources {
            cert_path: args.cp.metrics_cert_path.clone().unwrap_or_default(),
            key_path: args.cp.metrics_key_path.clone().unwrap_or_default(),
        },
        system_ca_path: system_ca_path(),
        // As kuma-dp: on unless turned off, and off where the host has no IPv6.
        ipv6_enabled: args.cp.ipv6_enabled && std::net::UdpSocket::bind("[::1]:0").is_ok(),
    })
}

/// kuma-dp's `--proxy-type` value.
fn proxy_type_name(kind: ProxyType) -> &'static str {
    match kind {
        ProxyType::Dataplane => "dataplane",
        ProxyType::Ingress => "ingress",
        ProxyType::Egress => "egress",
    }
}

/// The resource type `--proxy-type` expects.
fn resource_type(kind: ProxyType) -> &'static str {
    match kind {
        ProxyType::Dataplane => "Dataplane",
        ProxyType::Ingress => "ZoneIngress",
        ProxyType::Egress => "ZoneEgress",
    }
}

/// The proxy's resource (a template, YAML or JSON) rendered with `vars`, checked against
/// `--proxy-type`: (mesh, name, the resource as JSON text).
fn resource_json(
    text: &str,
    vars: &BTreeMap<String, String>,
    kind: ProxyType,
) -> Result<(String, String, String), String> {
    let rendered = template::render(text, vars)?;
    let docs = bearing_model::yaml::parse_documents(&rendered, 1).map_err(|e| e.to_string())?;
    let mut docs = docs.into_iter().filter(|d| !d.value.is_null());
    let (Some(doc), None) = (docs.next(), docs.next()) else {
        return Err("must hold exactly one resource".into());
    };
    let field = |key: &str| {
        doc.value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let expected = resource_type(kind);
    if field("type") != expected {
        return Err(format!(
            "invalid proxy resource type {:?}, expected {expected} (--proxy-type {})",
            field("type"),
            proxy_type_name(kind)
        ));
    }
    if field("name").is_empty() {
        return Err("the resource has no name".into());
    }
    Ok((field("mesh"), field("name"), doc.value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The bootstrap's `metrics.aggregate` entries become the Prometheus endpoint's
    /// applications in their order; one without an address or with a port outside
    /// 1..65535 is left out (logged).
    #[test]
    fn aggregate_entries_become_metrics_applications() {
        let entry = |name: &str, address: &str, port: u32| bearing_bootstrap::response::Aggregate {
            name: name.into(),
            address: address.into(),
            port,
            path: "/metrics".into(),
        };
        let applications = metrics_applications(&[
            entry("b", "10.0.0.1", 9090),
            entry("no-address", "", 9091),
            entry("too-big", "10.0.0.1", 70_000),
            entry("zero", "10.0.0.1", 0),
            entry("a", "app.local", 8080),
        ]);
        let app = |name: &str, address: &str, port: u16| MetricsApplication {
            name: name.into(),
            address: address.into(),
            port,
            path: "/metrics".into(),
        };
        assert_eq!(
            applications,
            [app("b", "10.0.0.1", 9090), app("a", "app.local", 8080)]
        );
    }

    /// A sink for node `default.dp-1` and the status channel it publishes on.
    fn sink() -> (CpSink, watch::Receiver<ConfigStatus>) {
        let (status, rx) = watch::channel(ConfigStatus::default());
        let node = NodeInfo {
            name: "dp-1".into(),
            mesh: "default".into(),
            proxy_type: "dataplane".into(),
            source: "test".into(),
        };
        (CpSink::new(node, status, Vec::new()), rx)
    }

    /// `state` with `resource_type` set to `resources` (name → Any) at version `v1`.
    fn with(
        state: &ResourceState,
        resource_type: ResourceType,
        resources: &[(&str, &str)],
    ) -> ResourceState {
        let resources = resources
            .iter()
            .map(|(name, type_url)| {
                let any = bearing_xds::envoy_types::pb::google::protobuf::Any {
                    type_url: type_url.to_string(),
                    value: Vec::new(),
                };
                (name.to_string(), any)
            })
            .collect();
        state.with(
            resource_type,
            bearing_xds::TypeResources {
                version: "v1".into(),
                resources,
            },
        )
    }

    #[test]
    fn nothing_applies_before_clusters_and_listeners_then_a_config_does() {
        let (mut sink, rx) = sink();
        let mut state = ResourceState::default();
        state = with(&state, ResourceType::Cluster, &[]);
        assert_eq!(sink.offer(&state, ResourceType::Cluster), Ok(()));
        assert!(
            rx.borrow().applied.is_none(),
            "applied before Listener came"
        );
        state = with(&state, ResourceType::ClusterLoadAssignment, &[]);
        assert_eq!(
            sink.offer(&state, ResourceType::ClusterLoadAssignment),
            Ok(())
        );
        assert!(
            rx.borrow().applied.is_none(),
            "applied before Listener came"
        );
        // kuma-cp sends no Secret for a mesh without mTLS: the listeners are enough.
        state = with(&state, ResourceType::Listener, &[]);
        assert_eq!(sink.offer(&state, ResourceType::Listener), Ok(()));
        let applied = rx.borrow().applied.clone().expect("applied");
        assert_eq!(applied.config.identity.name, "dp-1");
        assert_eq!(applied.config.source, "test");
    }

    #[test]
    fn untranslatable_state_is_refused_recorded_and_the_last_config_kept() {
        let (mut sink, rx) = sink();
        let mut state = ResourceState::default();
        for resource_type in INITIAL_TYPES {
            state = with(&state, resource_type, &[]);
        }
        assert_eq!(sink.offer(&state, ResourceType::Listener), Ok(()));
        let good = rx.borrow().applied.clone().expect("applied").config;
        // Two runtime layers with a key Bearing does not implement.
        let layer = |name: &str| {
            let json =
                serde_json::json!({"name": name, "layer": {"re2.max_program_size.error_level": 1}});
            let decoded =
                bearing_envoy_config::decode_json_resource(ResourceType::Runtime.type_url(), &json)
                    .expect("a Runtime");
            let any = bearing_xds::envoy_types::pb::google::protobuf::Any {
                type_url: ResourceType::Runtime.type_url().into(),
                value: decoded.value,
            };
            (name.to_string(), any)
        };
        let bad = state.with(
            ResourceType::Runtime,
            bearing_xds::TypeResources {
                version: "v1".into(),
                resources: [layer("rtds-a"), layer("rtds-b")].into_iter().collect(),
            },
        );
        let rejection = sink.offer(&bad, ResourceType::Runtime).unwrap_err();
        assert_eq!(rejection.resource, "Runtime rtds-a");
        assert!(rejection.field.contains("rtds-a"), "{rejection}");
        assert!(
            rejection.reason.contains("Runtime rtds-b: ")
                && rejection.reason.contains("runtime keys other than"),
            "every NACK is in the detail: {rejection}"
        );
        let status = rx.borrow().clone();
        let problems = status.last_rejected.expect("recorded").problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("Runtime rtds-a: "), "{problems:?}");
        assert_eq!(status.applied.expect("kept").config, good);
    }

    /// A STATIC cluster `name` with one endpoint on 127.0.0.1:`port`, as a golden resource.
    fn cluster_yaml(name: &str, port: u16) -> String {
        format!(
            "- name: {name}\n  resource:\n    '@type': {}\n    name: {name}\n    type: STATIC\n    connectTimeout: 5s\n    loadAssignment:\n      clusterName: {name}\n      endpoints:\n      - lbEndpoints:\n        - endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: {port}}}}}}}\n",
            ResourceType::Cluster.type_url()
        )
    }

    /// An outbound listener on 127.0.0.1:`port` proxying TCP to `cluster`.
    fn listener_yaml(cluster: &str, port: u16) -> String {
        format!(
            "- name: outbound:127.0.0.1:{port}\n  resource:\n    '@type': {}\n    name: outbound:127.0.0.1:{port}\n    address: {{socketAddress: {{address: 127.0.0.1, portValue: {port}}}}}\n    trafficDirection: OUTBOUND\n    filterChains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: {cluster}, statPrefix: {cluster}}}\n",
            ResourceType::Listener.type_url()
        )
    }

    /// `state` with `resource_type` set to the golden resources `yaml` at `version`.
    fn pushed(
        state: &ResourceState,
        resource_type: ResourceType,
        version: &str,
        yaml: &str,
    ) -> ResourceState {
        let text = match yaml.is_empty() {
            true => "resources: []".to_string(),
            false => format!("resources:\n{yaml}"),
        };
        let resources = bearing_envoy_config::parse_golden(&text, "t")
            .unwrap()
            .iter()
            .map(|raw| {
                let r = bearing_envoy_config::decode_raw(raw, "t").unwrap();
                let any = bearing_xds::envoy_types::pb::google::protobuf::Any {
                    type_url: r.type_url,
                    value: r.resource.value,
                };
                (r.name, any)
            })
            .collect();
        let version = version.to_string();
        state.with(resource_type, TypeResources { version, resources })
    }

    /// What a sink without a cache would make of `state`: every resource decoded, translated.
    fn translated_whole(state: &ResourceState) -> Result<ProxyConfig, Vec<Nack>> {
        let mut set = ResourceSet::default();
        let mut nacks = Vec::new();
        for (resource_type, resources) in state.iter() {
            for (name, any) in &resources.resources {
                if let Err(nack) = set.insert(name, resource_type.type_url(), &any.value) {
                    nacks.push(nack);
                }
            }
        }
        match nacks.is_empty() {
            true => translate(&set, &sink().0.node),
            false => Err(nacks),
        }
    }

    #[test]
    fn each_push_decodes_its_type_and_translates_as_the_whole_state_would() {
        let (mut sink, rx) = sink();
        let (c, l, e) = (
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::ClusterLoadAssignment,
        );
        let both = format!("{}{}", cluster_yaml("a", 8001), cluster_yaml("b", 8002));
        let mut state = pushed(&ResourceState::default(), c, "1", &both);
        let pushes = [
            (e, "1", String::new()),
            (l, "1", listener_yaml("a", 10001)),
            // kuma-cp pushes every type again on any change: same resources, new version.
            (c, "2", both.clone()),
            (e, "2", String::new()),
            (c, "3", format!("{both}{}", cluster_yaml("c", 8003))),
            (
                l,
                "3",
                listener_yaml("a", 10001) + &listener_yaml("c", 10003),
            ),
            (l, "4", listener_yaml("c", 10003)),
            (c, "5", cluster_yaml("c", 8004)),
        ];
        assert_eq!(sink.offer(&state, c), Ok(()));
        for (resource_type, version, yaml) in pushes {
            state = pushed(&state, resource_type, version, &yaml);
            let offered = sink
                .offer(&state, resource_type)
                .map(|()| rx.borrow().applied.as_ref().map(|a| (*a.config).clone()));
            let whole = translated_whole(&state);
            match (&offered, &whole) {
                (Ok(Some(applied)), Ok(config)) => assert_eq!(applied, config, "{version}"),
                (Ok(None), _) => assert_eq!((resource_type, version), (e, "1"), "not applied"),
                _ => panic!("{resource_type} {version}: {offered:?} / {whole:?}"),
            }
            // Every type the push did not change is still the set the state shares.
            for (t, (source, _)) in &sink.decoded.sources {
                assert!(Arc::ptr_eq(source, state.shared(*t).unwrap()), "{t}");
            }
        }
        let applied = rx.borrow().applied.clone().unwrap().config;
        assert_eq!(applied.clusters.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(applied.clusters["c"].endpoints[0].address.port(), 8004);
    }

    #[test]
    fn a_nacked_push_leaves_nothing_behind_for_the_next_push_of_another_type() {
        let (mut sink, rx) = sink();
        let (c, l) = (ResourceType::Cluster, ResourceType::Listener);
        let mut acked = pushed(&ResourceState::default(), c, "1", &cluster_yaml("a", 8001));
        acked = pushed(&acked, l, "1", &listener_yaml("a", 10001));
        assert_eq!(sink.offer(&acked, l), Ok(()));
        // Clusters v2: `a` moved and `b` added, but `b`'s endpoint is no IP address, which
        // does not translate: NACKed, and the ADS client keeps v1.
        let bad = cluster_yaml("b", 8002).replace("address: 127.0.0.1", "address: not-an-ip");
        let refused = pushed(&acked, c, "2", &(cluster_yaml("a", 9001) + &bad));
        let rejection = sink.offer(&refused, c).unwrap_err();
        assert!(rejection.resource.contains('b'), "{rejection}");
        // A Listener push then comes in the state of the last ACKed Clusters.
        let next = pushed(
            &acked,
            l,
            "2",
            &(listener_yaml("a", 10001) + &listener_yaml("a", 10002)),
        );
        assert_eq!(sink.offer(&next, l), Ok(()));
        let applied = rx.borrow().applied.clone().unwrap().config;
        assert_eq!(*applied, translated_whole(&next).unwrap());
        assert_eq!(applied.clusters.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(applied.clusters["a"].endpoints[0].address.port(), 8001);
        assert_eq!(applied.listeners.len(), 2);
    }

    #[test]
    fn an_undecodable_cluster_is_nacked_before_the_listeners_came() {
        let (mut sink, rx) = sink();
        let state = with(
            &ResourceState::default(),
            ResourceType::Cluster,
            &[("a", ResourceType::Cluster.type_url())],
        );
        let mut broken = state
            .shared(ResourceType::Cluster)
            .unwrap()
            .as_ref()
            .clone();
        if let Some(any) = broken.resources.get_mut("a") {
            any.value = vec![0xff, 0xff];
        }
        let state = state.with(ResourceType::Cluster, broken);
        let rejection = sink.offer(&state, ResourceType::Cluster).unwrap_err();
        assert_eq!(rejection.resource, "Cluster a", "{rejection}");
        assert!(rejection.reason.contains("does not decode"), "{rejection}");
        assert!(rx.borrow().applied.is_none());
        // The ADS client keeps no Clusters; with valid ones and the listeners it applies.
        let state = pushed(
            &ResourceState::default(),
            ResourceType::Cluster,
            "2",
            &cluster_yaml("a", 8001),
        );
        assert_eq!(sink.offer(&state, ResourceType::Cluster), Ok(()));
        let state = pushed(
            &state,
            ResourceType::Listener,
            "1",
            &listener_yaml("a", 10001),
        );
        assert_eq!(sink.offer(&state, ResourceType::Listener), Ok(()));
        assert!(rx.borrow().applied.is_some());
    }

    #[test]
    fn a_cluster_removed_before_its_listener_is_acked_and_applied_with_the_listeners() {
        let (mut sink, rx) = sink();
        let (c, l) = (ResourceType::Cluster, ResourceType::Listener);
        let both = cluster_yaml("a", 8001) + &cluster_yaml("b", 8002);
        let mut state = pushed(&ResourceState::default(), c, "1", &both);
        let listeners = listener_yaml("a", 10001) + &listener_yaml("b", 10002);
        state = pushed(&state, l, "1", &listeners);
        assert_eq!(sink.offer(&state, l), Ok(()));
        let served = rx.borrow().serving_version();
        // kuma-cp removes service b: Clusters first, while listener b still names it.
        state = pushed(&state, c, "2", &cluster_yaml("a", 8001));
        assert_eq!(sink.offer(&state, c), Ok(()), "ACKed, not NACKed");
        assert_eq!(
            rx.borrow().serving_version(),
            served,
            "applied only with the listeners"
        );
        state = pushed(&state, l, "2", &listener_yaml("a", 10001));
        assert_eq!(sink.offer(&state, l), Ok(()));
        let applied = rx.borrow().applied.clone().unwrap().config;
        assert_eq!(applied.clusters.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(applied.listeners.len(), 1);
        assert!(rx.borrow().last_rejected.is_none());
    }

    /// `bearing run --cp-address https://cp:5678 ARGS` parsed.
    fn run_args(args: &[&str]) -> RunArgs {
        let mut all = vec!["--cp-address", "https://cp:5678"];
        all.extend_from_slice(args);
        crate::args::tests::run_args(&all).unwrap()
    }

    /// The error of [`identity`] for these flags.
    fn identity_error(args: &[&str]) -> String {
        identity(&run_args(args), &CpTrust::System)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn resource_gives_mesh_and_name_and_is_sent_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dp.yaml");
        std::fs::write(
            &file,
            "type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: {{ address }}\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let args = run_args(&["-d", &path, "-v", "name=dp-1,address=10.0.0.2"]);
        let id = identity(&args, &CpTrust::System).unwrap();
        assert_eq!(
            (id.mesh.as_str(), id.name.as_str(), id.proxy_type.as_str()),
            ("default", "dp-1", "dataplane")
        );
        let json: serde_json::Value =
            serde_json::from_str(id.resource.as_deref().unwrap()).unwrap();
        assert_eq!(json["networking"]["address"], "10.0.0.2");
        assert_eq!(id.dns_port, 15054);
        assert_eq!(id.readiness_port, 9902);
        let args = run_args(&[
            "--name",
            "n",
            "--cp-retry-backoff",
            "1m30s",
            "--readiness-port",
            "19902",
        ]);
        assert_eq!(args.cp.retry_backoff, Duration::from_secs(90));
        assert_eq!(args.cp.retry_max_duration, Duration::from_secs(300));
        let id = identity(&args, &CpTrust::System).unwrap();
        assert_eq!(id.readiness_port, 19902);
        let args = run_args(&["--name", "n", "--ipv6-enabled=false"]);
        assert!(!identity(&args, &CpTrust::System).unwrap().ipv6_enabled);

        let err = identity_error(&[
            "-d",
            &path,
            "-v",
            "name=dp-1",
            "-v",
            "address=a",
            "--name",
            "x",
        ]);
        assert!(err.contains("--name and --mesh cannot be given"), "{err}");
        let err = identity_error(&[
            "-d",
            &path,
            "-v",
            "name=dp-1,address=a",
            "--proxy-type",
            "egress",
        ]);
        assert!(err.contains("expected ZoneEgress"), "{err}");
        assert!(err.contains(&path), "{err}");
        let err = identity_error(&["-d", &path]);
        assert!(err.contains("--dataplane-var name="), "{err}");
        let err = identity_error(&[]);
        assert!(err.contains("needs this proxy's resource"), "{err}");
    }

    #[test]
    fn name_and_mesh_without_a_resource() {
        let args = run_args(&["--name", "dp-1", "--mesh", "m"]);
        let id = identity(&args, &CpTrust::System).unwrap();
        assert_eq!((id.mesh.as_str(), id.name.as_str()), ("m", "dp-1"));
        assert!(id.resource.is_none());
    }

    #[test]
    fn ca_pem_is_sent_to_the_cp() {
        let cert = rcgen::generate_simple_self_signed(vec!["cp".to_string()]).unwrap();
        let trust = CpTrust::from_pem(&cert.cert.pem(), "test").unwrap();
        let args = run_args(&["--name", "dp-1"]);
        let id = identity(&args, &trust).unwrap();
        assert!(
            id.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"),
            "{}",
            id.ca_cert
        );
    }
}
