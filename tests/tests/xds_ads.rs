//! The ADS client (bearing-xds) against the test control plane, in-process: initial sync,
//! NACK and ACK, control-plane restarts, garbage, token handling, and `/bootstrap`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bearing_e2e::envoy_bin;
use bearing_e2e::test_cp::{Event, Resources, TestCp, TestCpConfig};
use bearing_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use bearing_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use bearing_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
use bearing_xds::envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use bearing_xds::envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use bearing_xds::envoy_types::pb::envoy::service::runtime::v3::Runtime;
use bearing_xds::envoy_types::pb::google::protobuf::{Any, Struct};
use bearing_xds::{
    cp_endpoint, kuma_node, to_any, AdsClient, ConfigSink, Rejection, ResourceState, ResourceType,
    TokenSource,
};
use prost::Name;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// How long a test waits for the control plane or the client to do something.
const WAIT: Duration = Duration::from_secs(20);

/// A message of type `M` whose name (the field `name_field` gives) is `name`, as an Any.
fn named<M: prost::Message + Name + Default>(
    name: &str,
    name_field: fn(&mut M) -> &mut String,
) -> Any {
    let mut message = M::default();
    *name_field(&mut message) = name.into();
    to_any(&message)
}

fn cluster(name: &str) -> Any {
    named::<Cluster>(name, |c| &mut c.name)
}

/// One resource of every type; clusters named by `clusters`.
fn resources(clusters: &[&str]) -> Resources {
    Resources::from([
        (
            Cluster::type_url(),
            clusters.iter().map(|n| cluster(n)).collect(),
        ),
        (
            ClusterLoadAssignment::type_url(),
            vec![named::<ClusterLoadAssignment>("backend", |c| {
                &mut c.cluster_name
            })],
        ),
        (
            Listener::type_url(),
            vec![named::<Listener>("inbound:10.0.0.1:80", |l| &mut l.name)],
        ),
        (
            RouteConfiguration::type_url(),
            vec![named::<RouteConfiguration>("gateway:80", |r| &mut r.name)],
        ),
        (
            Secret::type_url(),
            vec![named::<Secret>("identity_cert:secret:default", |s| {
                &mut s.name
            })],
        ),
        (
            Runtime::type_url(),
            vec![named::<Runtime>("gateway.listeners", |r| &mut r.name)],
        ),
    ])
}

/// Keeps what it is offered unless a cluster's name starts with `unsupported-`; every offer
/// and its outcome goes to the test.
struct RecordingSink {
    offers: mpsc::UnboundedSender<(ResourceState, ResourceType, bool)>,
}

impl ConfigSink for RecordingSink {
    fn offer(&mut self, state: &ResourceState, changed: ResourceType) -> Result<(), Rejection> {
        let refused = state
            .get(ResourceType::Cluster)
            .resources
            .keys()
            .find(|name| name.starts_with("unsupported-"))
            .map(|name| {
                Rejection::new(
                    format!("Cluster {name}"),
                    "cluster_discovery_type",
                    "not supported",
                )
            });
        let _ = self
            .offers
            .send((state.clone(), changed, refused.is_none()));
        refused.map_or(Ok(()), Err)
    }
}

/// A running client; the task is aborted on drop.
struct Client {
    task: tokio::task::JoinHandle<()>,
    offers: mpsc::UnboundedReceiver<(ResourceState, ResourceType, bool)>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_client(addr: SocketAddr, token: TokenSource) -> Result<Client> {
    let channel = cp_endpoint(&format!("http://{addr}"))?.connect_lazy();
    let mut client = AdsClient::new(
        channel,
        kuma_node("default.dp-1", "backend", Struct::default()),
        token,
    );
    let (offers_tx, offers) = mpsc::unbounded_channel();
    let mut sink = RecordingSink { offers: offers_tx };
    let task = tokio::spawn(async move { client.run(&mut sink).await });
    Ok(Client { task, offers })
}

impl Client {
    /// Waits until an offer of a state satisfying `done` is kept; returns that state.
    async fn wait_kept(&mut self, done: impl Fn(&ResourceState) -> bool) -> Result<ResourceState> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let offer = tokio::time::timeout_at(deadline, self.offers.recv())
                .await
                .context("no kept offer in time")?;
            let Some((state, _, kept)) = offer else {
                bail!("the client stopped");
            };
            if kept && done(&state) {
                return Ok(state);
            }
        }
    }
}

async fn start_cp(addr: &str, config: TestCpConfig, resources: Resources) -> Result<TestCp> {
    // The address may have just been freed by a stopped CP: retry the bind briefly.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return TestCp::start(listener, config, resources),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("bind {addr}: {last:?}")
}

/// A plaintext CP on a free loopback port serving `resources(&["backend"])`, its events from
/// the start and its version.
async fn backend_cp() -> Result<(TestCp, broadcast::Receiver<Event>, String)> {
    let cp = start_cp(
        "127.0.0.1:0",
        TestCpConfig::default(),
        resources(&["backend"]),
    )
    .await?;
    let events = cp.events();
    let version = cp.snapshot().version.clone();
    Ok((cp, events, version))
}

/// The CONNECT event of node `default.dp-1` with `token`.
fn connect_of(token: Option<&str>) -> Event {
    Event::Connect {
        node: "default.dp-1".into(),
        token: token.map(str::to_string),
    }
}

/// Waits for the first event `matches` accepts, returning it.
async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    matches: impl Fn(&Event) -> bool,
) -> Result<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .context("no matching control-plane event in time")?
            .context("event channel")?;
        if matches(&event) {
            return Ok(event);
        }
    }
}

/// Waits for the ACK of every type at `version`.
async fn wait_all_acked(events: &mut broadcast::Receiver<Event>, version: &str) -> Result<()> {
    let mut acked = Vec::new();
    while acked.len() < ResourceType::ALL.len() {
        let event = wait_event(
            events,
            |e| matches!(e, Event::Ack { version: v, .. } if v == version),
        )
        .await?;
        if let Event::Ack { type_url, .. } = event {
            if !acked.contains(&type_url) {
                acked.push(type_url);
            }
        }
    }
    Ok(())
}

fn names(state: &ResourceState, resource_type: ResourceType) -> Vec<String> {
    state.get(resource_type).resources.keys().cloned().collect()
}

#[tokio::test]
async fn initial_sync_of_every_type_in_envoys_order() -> Result<()> {
    let (cp, mut events, version) = backend_cp().await?;
    let mut client = start_client(cp.addr(), TokenSource::None)?;

    // Subscriptions (so the first responses) come in Envoy's order, to the named node.
    let mut pushed = Vec::new();
    while pushed.len() < ResourceType::ALL.len() {
        if let Event::Push { type_url, node, .. } =
            wait_event(&mut events, |e| matches!(e, Event::Push { .. })).await?
        {
            assert_eq!(node, "default.dp-1");
            pushed.push(type_url);
        }
    }
    let expected: Vec<String> = ResourceType::ALL
        .iter()
        .map(|t| t.type_url().to_string())
        .collect();
    assert_eq!(pushed, expected);

    let state = client
        .wait_kept(|s| ResourceType::ALL.iter().all(|t| s.version(*t) == version))
        .await?;
    wait_all_acked(&mut events, &version).await?;
    assert_eq!(names(&state, ResourceType::Cluster), ["backend"]);
    assert_eq!(
        names(&state, ResourceType::ClusterLoadAssignment),
        ["backend"]
    );
    assert_eq!(
        names(&state, ResourceType::Listener),
        ["inbound:10.0.0.1:80"]
    );
    assert_eq!(
        names(&state, ResourceType::RouteConfiguration),
        ["gateway:80"]
    );
    assert_eq!(
        names(&state, ResourceType::Secret),
        ["identity_cert:secret:default"]
    );
    assert_eq!(names(&state, ResourceType::Runtime), ["gateway.listeners"]);
    Ok(())
}

#[tokio::test]
async fn refused_config_is_nacked_with_detail_and_the_previous_kept_then_a_fix_is_acked(
) -> Result<()> {
    let (cp, mut events, good) = backend_cp().await?;
    let mut client = start_client(cp.addr(), TokenSource::None)?;
    wait_all_acked(&mut events, &good).await?;

    let bad = cp.set_resources(resources(&["backend", "unsupported-x"]));
    let nack = wait_event(&mut events, |e| matches!(e, Event::Nack { .. })).await?;
    let Event::Nack {
        type_url,
        version,
        kept,
        node,
        detail,
    } = nack
    else {
        unreachable!()
    };
    assert_eq!(type_url, Cluster::type_url());
    assert_eq!(
        (version.as_str(), kept.as_str(), node.as_str()),
        (bad.as_str(), good.as_str(), "default.dp-1")
    );
    assert_eq!(
        detail,
        "Cluster unsupported-x: cluster_discovery_type: not supported"
    );
    // The other types of the bad snapshot carry the same resources and are accepted; the
    // client keeps the good clusters.
    let kept_state = client
        .wait_kept(|s| s.version(ResourceType::Listener) == bad)
        .await?;
    assert_eq!(kept_state.version(ResourceType::Cluster), good);
    assert_eq!(names(&kept_state, ResourceType::Cluster), ["backend"]);
    // The NACK line as bearing-test-cp prints it.
    let line = Event::Nack {
        type_url,
        version,
        kept,
        node,
        detail,
    }
    .to_string();
    assert_eq!(line, format!("NACK type=Cluster version={bad} kept={good} node=default.dp-1 detail=Cluster unsupported-x: cluster_discovery_type: not supported"));

    let fixed = cp.set_resources(resources(&["backend", "web"]));
    let ack = wait_event(
        &mut events,
        |e| matches!(e, Event::Ack { type_url, .. } if *type_url == Cluster::type_url()),
    )
    .await?;
    assert_eq!(
        ack,
        Event::Ack {
            type_url: Cluster::type_url(),
            version: fixed.clone(),
            node: "default.dp-1".into()
        }
    );
    assert_eq!(
        ack.to_string(),
        format!("ACK type=Cluster version={fixed} node=default.dp-1")
    );
    let state = client
        .wait_kept(|s| s.version(ResourceType::Cluster) == fixed)
        .await?;
    assert_eq!(names(&state, ResourceType::Cluster), ["backend", "web"]);
    Ok(())
}

#[tokio::test]
async fn control_plane_restart_reconnects_and_resyncs() -> Result<()> {
    let cp = start_cp(
        "127.0.0.1:0",
        TestCpConfig::default(),
        resources(&["backend"]),
    )
    .await?;
    let addr = cp.addr();
    let mut events = cp.events();
    let first = cp.snapshot().version.clone();
    let mut client = start_client(addr, TokenSource::None)?;
    wait_all_acked(&mut events, &first).await?;

    // Restarted with the same resources: the client subscribes again with the versions it
    // has, so (as go-control-plane) nothing is sent until something changes.
    drop(cp);
    let cp = start_cp(
        &addr.to_string(),
        TestCpConfig::default(),
        resources(&["backend"]),
    )
    .await?;
    let mut events = cp.events();
    wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    let changed = cp.set_resources(resources(&["backend", "web"]));
    let push = wait_event(&mut events, |e| matches!(e, Event::Push { .. })).await?;
    assert!(
        matches!(push, Event::Push { ref version, .. } if *version == changed),
        "{push}"
    );
    wait_all_acked(&mut events, &changed).await?;
    let state = client
        .wait_kept(|s| s.version(ResourceType::Cluster) == changed)
        .await?;
    assert_eq!(names(&state, ResourceType::Cluster), ["backend", "web"]);

    // Restarted with other resources: offered again in full and applied.
    drop(cp);
    let cp = start_cp(
        &addr.to_string(),
        TestCpConfig::default(),
        resources(&["api"]),
    )
    .await?;
    let mut events = cp.events();
    let third = cp.snapshot().version.clone();
    wait_all_acked(&mut events, &third).await?;
    let state = client
        .wait_kept(|s| ResourceType::ALL.iter().all(|t| s.version(*t) == third))
        .await?;
    assert_eq!(names(&state, ResourceType::Cluster), ["api"]);
    Ok(())
}

#[tokio::test]
async fn garbage_from_the_control_plane_is_nacked_without_panic() -> Result<()> {
    let (cp, mut events, good) = backend_cp().await?;
    let mut client = start_client(cp.addr(), TokenSource::None)?;
    wait_all_acked(&mut events, &good).await?;

    let listener_as_cluster = to_any(&Listener {
        name: "l".into(),
        ..Default::default()
    });
    let mut truncated = cluster("a-cluster-with-a-long-name");
    truncated.value.truncate(7);
    let garbage = [
        (vec![cluster("backend"), listener_as_cluster], "Cluster #1: type_url: \"type.googleapis.com/envoy.config.listener.v3.Listener\" differs from the response's type"),
        (vec![truncated], "Cluster #0: value: does not decode as Cluster"),
        (vec![cluster("backend"), cluster("backend")], "Cluster backend: name: duplicated in the response"),
        (vec![cluster("")], "Cluster #0: name: empty"),
    ];
    for (clusters, expected) in garbage {
        let mut bad = resources(&[]);
        bad.insert(Cluster::type_url(), clusters);
        let version = cp.set_resources(bad);
        let nack = wait_event(
            &mut events,
            |e| matches!(e, Event::Nack { version: v, .. } if *v == version),
        )
        .await?;
        let Event::Nack { detail, kept, .. } = nack else {
            unreachable!()
        };
        assert!(
            detail.starts_with(expected),
            "{detail:?} does not start with {expected:?}"
        );
        assert_eq!(kept, good);
    }
    let fixed = cp.set_resources(resources(&["web"]));
    let state = client
        .wait_kept(|s| s.version(ResourceType::Cluster) == fixed)
        .await?;
    assert_eq!(names(&state, ResourceType::Cluster), ["web"]);
    assert!(!client.task.is_finished(), "the client task ended");
    Ok(())
}

/// Writes `token` to `path` (as kubelet rotates a projected token file).
fn write_token(path: &Path, token: &str) -> Result<()> {
    std::fs::write(path, format!("{token}\n")).with_context(|| format!("write {}", path.display()))
}

#[tokio::test]
async fn token_is_sent_as_metadata_and_read_again_for_each_stream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client_token = dir.path().join("client-token");
    let cp_token = dir.path().join("cp-token");
    write_token(&client_token, "token-1")?;
    write_token(&cp_token, "token-1")?;
    let config = TestCpConfig {
        require_token: Some(cp_token.clone()),
        ..Default::default()
    };
    let cp = start_cp("127.0.0.1:0", config.clone(), resources(&["backend"])).await?;
    let addr = cp.addr();
    let mut events = cp.events();
    let _client = start_client(addr, TokenSource::File(client_token.clone()))?;
    let connect = wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    assert_eq!(connect, connect_of(Some("token-1")));
    assert_eq!(connect.to_string(), "CONNECT node=default.dp-1 token=yes");

    // Rotated on both sides, then the CP restarts: the new stream carries the new token.
    write_token(&client_token, "token-2")?;
    write_token(&cp_token, "token-2")?;
    drop(cp);
    let cp = start_cp(&addr.to_string(), config.clone(), resources(&["backend"])).await?;
    let mut events = cp.events();
    let connect = wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    assert_eq!(connect, connect_of(Some("token-2")));

    // A token the CP does not accept: refused (UNAUTHENTICATED), the client keeps retrying and
    // gets in once its file holds the right token again.
    write_token(&client_token, "stolen")?;
    drop(cp);
    let cp = start_cp(&addr.to_string(), config, resources(&["backend"])).await?;
    let mut events = cp.events();
    let refused = wait_event(&mut events, |e| matches!(e, Event::Refused { .. })).await?;
    assert_eq!(
        refused.to_string(),
        "REFUSED the authorization metadata is not the dataplane token"
    );
    write_token(&client_token, "token-2")?;
    let connect = wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    assert_eq!(connect, connect_of(Some("token-2")));
    Ok(())
}

#[tokio::test]
async fn fixed_token_and_no_token() -> Result<()> {
    let (cp, mut events, _) = backend_cp().await?;
    let _with = start_client(cp.addr(), TokenSource::Fixed("fixed".into()))?;
    let connect = wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    assert_eq!(connect, connect_of(Some("fixed")));
    let _without = start_client(cp.addr(), TokenSource::None)?;
    let connect = wait_event(&mut events, |e| matches!(e, Event::Connect { .. })).await?;
    assert_eq!(connect, connect_of(None));
    Ok(())
}

/// Resources in the xds-generator golden format: a Listener and the given clusters.
fn golden_yaml(clusters: &[&str]) -> String {
    let mut text = String::from(
        "resources:\n- name: inbound:127.0.0.1:8080\n  resource:\n    '@type': type.googleapis.com/envoy.config.listener.v3.Listener\n    name: inbound:127.0.0.1:8080\n    address:\n      socketAddress:\n        address: 127.0.0.1\n        portValue: 8080\n",
    );
    for name in clusters {
        text.push_str(&format!(
            "- name: {name}\n  resource:\n    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n    name: {name}\n    type: EDS\n    connectTimeout: 5s\n"
        ));
    }
    text
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct LineProcess {
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LineProcess {
    /// Starts `bearing-test-cp` with `args`, its stderr into the file `stderr`.
    fn test_cp(args: &[&str], stderr: &Path) -> Result<LineProcess> {
        LineProcess::start(
            Path::new(env!("CARGO_BIN_EXE_bearing-test-cp")),
            args,
            stderr,
        )
    }

    fn start(program: &Path, args: &[&str], stderr: &Path) -> Result<LineProcess> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(stderr)?)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Ok(LineProcess { child, lines })
    }

    /// The next line starting with `prefix` (earlier lines are skipped).
    async fn line(&mut self, prefix: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| {
                    format!("no line starting with {prefix:?} in time after {skipped:#?}")
                })?
                .context("the process exited")?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            skipped.push(line);
        }
    }
}

/// The version of a `SNAPSHOT version=V resources=N` line, checking N.
fn snapshot_version(line: &str, resources: usize) -> Result<String> {
    line.strip_prefix("SNAPSHOT version=")
        .and_then(|rest| rest.strip_suffix(&format!(" resources={resources}")))
        .map(str::to_string)
        .with_context(|| format!("{line:?} is not a snapshot of {resources} resources"))
}

/// POSTs `body` to `url` with curl; status and body.
fn post(url: &str, body: &str, extra: &[&str]) -> Result<(u16, String)> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "accept: application/json",
            "--data-binary",
            body,
        ])
        .args(["-w", "\n%{http_code}", url])
        .args(extra)
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse().context("status")?, body.to_string()))
}

/// The bootstrap document of a 200 answer.
fn bootstrap_document(body: &str) -> Result<serde_json::Value> {
    use base64::Engine;
    let answer: serde_json::Value = serde_json::from_str(body)?;
    let yaml = base64::engine::general_purpose::STANDARD
        .decode(answer["bootstrap"].as_str().context("bootstrap")?)?;
    Ok(serde_json::from_slice(&yaml)?)
}

#[tokio::test]
async fn test_cp_binary_serves_bootstrap_and_ads_from_golden_files_and_prints_events() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let resources = dir.path().join("resources.yaml");
    std::fs::write(&resources, golden_yaml(&["backend"]))?;
    let token = dir.path().join("token");
    write_token(&token, "token")?;
    let mut cp = LineProcess::test_cp(
        &[
            "--listen",
            "127.0.0.1:0",
            "--require-token",
            token.to_str().context("path")?,
            "--resources",
            resources.to_str().context("path")?,
        ],
        &dir.path().join("stderr"),
    )?;
    let listen = cp.line("LISTEN addr=").await?;
    let addr: SocketAddr = listen.trim_start_matches("LISTEN addr=").parse()?;
    let version = snapshot_version(&cp.line("SNAPSHOT ").await?, 2)?;

    // kuma-dp's request (the golden body): the bootstrap points ADS back at this CP.
    let request = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/kuma-corpus/kuma-dp-bootstrap-request/bootstrap-request-metrics-metadata.golden.json"
    ))
    .context("golden bootstrap request")?;
    let url = format!("http://{addr}/bootstrap");
    let (status, body) = post(&url, &request, &[])?;
    assert_eq!(status, 200, "{body}");
    let document = bootstrap_document(&body)?;
    assert_eq!(document["node"]["id"], "demo.sample");
    assert_eq!(
        document["dynamicResources"]["adsConfig"]["setNodeOnFirstMessageOnly"],
        true
    );
    let endpoint = &document["staticResources"]["clusters"][0]["loadAssignment"]["endpoints"][0]
        ["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"];
    assert_eq!(
        (endpoint["address"].as_str(), endpoint["portValue"].as_u64()),
        (Some("127.0.0.1"), Some(u64::from(addr.port())))
    );
    assert_eq!(
        cp.line("BOOTSTRAP ").await?,
        "BOOTSTRAP node=demo.sample status=200"
    );

    // No token while one is required: kuma-cp's 422.
    let mut no_token: serde_json::Value = serde_json::from_str(&request)?;
    no_token["dataplaneToken"] = "".into();
    let (status, body) = post(&url, &no_token.to_string(), &[])?;
    assert_eq!(status, 422);
    assert!(body.starts_with("Dataplane Token is required."), "{body}");
    assert_eq!(
        cp.line("BOOTSTRAP ").await?,
        "BOOTSTRAP node=demo.sample status=422"
    );
    // Not /bootstrap: kuma-cp's 404 (what kuma-dp reports as a wrong port).
    let (status, body) = post(&format!("http://{addr}/other"), "{}", &[])?;
    assert_eq!((status, body.as_str()), (404, "404: Page Not Found"));

    // ADS on the same port: every line of the exchange.
    let mut client = start_client(addr, TokenSource::File(token.clone()))?;
    assert_eq!(
        cp.line("CONNECT ").await?,
        "CONNECT node=default.dp-1 token=yes"
    );
    let push = cp.line("PUSH type=Cluster ").await?;
    assert!(
        push.starts_with(&format!("PUSH type=Cluster version={version} nonce="))
            && push.ends_with(" node=default.dp-1 resources=1"),
        "{push}"
    );
    assert_eq!(
        cp.line("ACK type=Cluster ").await?,
        format!("ACK type=Cluster version={version} node=default.dp-1")
    );
    client
        .wait_kept(|s| s.version(ResourceType::Listener) == version)
        .await?;

    // A changed file is served again; the client refuses it and the NACK's detail is printed.
    std::fs::write(&resources, golden_yaml(&["backend", "unsupported-x"]))?;
    let bad = snapshot_version(&cp.line("SNAPSHOT ").await?, 3)?;
    assert_eq!(
        cp.line("NACK ").await?,
        format!("NACK type=Cluster version={bad} kept={version} node=default.dp-1 detail=Cluster unsupported-x: cluster_discovery_type: not supported")
    );

    // A file that does not decode is reported on stderr and not served; the next good one is.
    std::fs::write(
        &resources,
        golden_yaml(&["backend"]).replace("connectTimeout: 5s", "connectTimeout: soon"),
    )?;
    let stderr = dir.path().join("stderr");
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&stderr)?.contains(&format!("still serving version {bad}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no load error on stderr"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = std::fs::read_to_string(&stderr)?;
    assert!(
        report.contains(&format!(
            "{}: type.googleapis.com/envoy.config.cluster.v3.Cluster backend: connectTimeout",
            resources.display()
        )),
        "{report}"
    );
    std::fs::write(&resources, golden_yaml(&["web"]))?;
    let good = snapshot_version(&cp.line("SNAPSHOT ").await?, 2)?;
    assert_eq!(
        cp.line("ACK type=Cluster ").await?,
        format!("ACK type=Cluster version={good} node=default.dp-1")
    );
    Ok(())
}

/// A test TLS connector for the ADS channel (what the CP TLS connector of the bootstrap crate
/// plugs into): TCP to the URI's host and port, then TLS verified against `roots`, ALPN h2.
#[derive(Clone)]
struct TestTlsConnector(Arc<rustls::ClientConfig>);

impl TestTlsConnector {
    fn trusting(ca_pem: &str) -> Result<TestTlsConnector> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TestTlsConnector(Arc::new(config)))
    }
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for TestTlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let config = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri}: no host")))?
                .trim_matches(['[', ']'])
                .to_string();
            let tcp =
                tokio::net::TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(443)))
                    .await?;
            let name =
                rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[tokio::test]
async fn ads_and_bootstrap_over_tls_with_a_plugged_in_connector() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = bearing_e2e::TestCa::new(dir.path(), "cp-ca")?;
    let leaf = ca.issue("cp", &["DNS:localhost", "IP:127.0.0.1"])?;
    let config = TestCpConfig {
        tls: Some(bearing_e2e::test_cp::tls_config(&leaf.cert, &leaf.key)?),
        ..Default::default()
    };
    let cp = start_cp("127.0.0.1:0", config, resources(&["backend"])).await?;
    let addr = cp.addr();
    let mut events = cp.events();
    let version = cp.snapshot().version.clone();

    let connector = TestTlsConnector::trusting(&ca.cert_pem()?)?;
    let channel = cp_endpoint(&format!("https://127.0.0.1:{}", addr.port()))?
        .connect_with_connector_lazy(connector);
    let mut client = AdsClient::new(
        channel,
        kuma_node("default.dp-1", "backend", Struct::default()),
        TokenSource::None,
    );
    let (offers_tx, offers) = mpsc::unbounded_channel();
    let task =
        tokio::spawn(async move { client.run(&mut RecordingSink { offers: offers_tx }).await });
    let mut client = Client { task, offers };
    wait_all_acked(&mut events, &version).await?;
    client
        .wait_kept(|s| ResourceType::ALL.iter().all(|t| s.version(*t) == version))
        .await?;

    // /bootstrap on the same TLS port; the bootstrap trusts the CP's certificate by SNI.
    let ca_file = ca.files().cert.to_str().context("path")?.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || {
        post(
            &format!("https://localhost:{}/bootstrap", addr.port()),
            r#"{"mesh":"default","name":"dp-1"}"#,
            &["--cacert", &ca_file],
        )
    })
    .await??;
    assert_eq!(status, 200, "{body}");
    let document = bootstrap_document(&body)?;
    let tls = &document["staticResources"]["clusters"][0]["transportSocket"]["typedConfig"];
    assert_eq!(tls["sni"], "localhost");
    assert_eq!(
        document["staticResources"]["secrets"][0]["name"],
        "cp_validation_ctx"
    );
    Ok(())
}

/// A STATIC cluster `backend` and a TCP-proxy listener on a free loopback port whose
/// `tcp_proxy` is `proxy` (YAML flow mapping).
fn envoy_golden(proxy: &str) -> String {
    format!(
        "resources:
- name: backend
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: backend
    type: STATIC
    connectTimeout: 1s
    loadAssignment: {{clusterName: backend, endpoints: [{{lbEndpoints: [{{endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: 9}}}}}}}}]}}]}}
- name: inbound
  resource:
    '@type': type.googleapis.com/envoy.config.listener.v3.Listener
    name: inbound
    address: {{socketAddress: {{address: 127.0.0.1, portValue: 0}}}}
    filterChains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typedConfig: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, {proxy}}}
"
    )
}

#[tokio::test]
async fn real_envoy_bootstraps_from_the_test_cp_and_its_acks_and_nacks_are_printed() -> Result<()> {
    let envoy = envoy_bin()?;
    let dir = tempfile::tempdir()?;
    let resources = dir.path().join("resources.yaml");
    std::fs::write(&resources, envoy_golden("statPrefix: in, cluster: backend"))?;
    let mut cp = LineProcess::test_cp(
        &[
            "--listen",
            "127.0.0.1:0",
            "--resources",
            resources.to_str().context("path")?,
        ],
        &dir.path().join("cp.stderr"),
    )?;
    let addr: SocketAddr = cp
        .line("LISTEN addr=")
        .await?
        .trim_start_matches("LISTEN addr=")
        .parse()?;
    let first = snapshot_version(&cp.line("SNAPSHOT ").await?, 2)?;
    let (status, body) = post(
        &format!("http://{addr}/bootstrap"),
        r#"{"mesh":"default","name":"dp-1"}"#,
        &[],
    )?;
    assert_eq!(status, 200, "{body}");
    // The document is JSON (which is YAML); Envoy picks its parser by the file's extension.
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap, bootstrap_document(&body)?.to_string())?;
    let _envoy = LineProcess::start(
        &envoy,
        &[
            "-c",
            bootstrap.to_str().context("path")?,
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
        &dir.path().join("envoy.log"),
    )?;
    assert_eq!(
        cp.line("CONNECT ").await?,
        "CONNECT node=default.dp-1 token=no"
    );
    assert_eq!(
        cp.line("ACK type=Cluster ").await?,
        format!("ACK type=Cluster version={first} node=default.dp-1")
    );
    assert_eq!(
        cp.line("ACK type=Listener ").await?,
        format!("ACK type=Listener version={first} node=default.dp-1")
    );

    // Envoy refuses a TCP proxy without a cluster: its NACK detail is printed, naming the field.
    std::fs::write(&resources, envoy_golden("statPrefix: in"))?;
    let bad = snapshot_version(&cp.line("SNAPSHOT ").await?, 2)?;
    let nack = cp.line("NACK ").await?;
    let expected = format!("NACK type=Listener version={bad} kept={first} node=default.dp-1 detail=Error adding/updating listener(s) inbound: ");
    assert!(
        nack.starts_with(&expected) && nack.contains("cluster_specifier"),
        "{nack}"
    );

    // Fixed: acknowledged again.
    std::fs::write(
        &resources,
        envoy_golden("statPrefix: fixed, cluster: backend"),
    )?;
    let fixed = snapshot_version(&cp.line("SNAPSHOT ").await?, 2)?;
    assert_eq!(
        cp.line("ACK type=Listener ").await?,
        format!("ACK type=Listener version={fixed} node=default.dp-1")
    );

    // EDS clusters: Envoy asks for their endpoints by name, and again with the new name when a
    // second one comes; each time it gets and acknowledges exactly what it asked for.
    let base = envoy_golden("statPrefix: fixed, cluster: backend");
    std::fs::write(&resources, format!("{base}{}", eds_cluster("web")))?;
    let one = snapshot_version(&cp.line("SNAPSHOT ").await?, 4)?;
    let push = cp.line("PUSH type=ClusterLoadAssignment ").await?;
    assert!(
        push.starts_with(&format!("PUSH type=ClusterLoadAssignment version={one} "))
            && push.ends_with(" resources=1"),
        "{push}"
    );
    assert_eq!(
        cp.line("ACK type=ClusterLoadAssignment ").await?,
        format!("ACK type=ClusterLoadAssignment version={one} node=default.dp-1")
    );
    std::fs::write(
        &resources,
        format!("{base}{}{}", eds_cluster("web"), eds_cluster("api")),
    )?;
    let two = snapshot_version(&cp.line("SNAPSHOT ").await?, 6)?;
    let mut push = cp.line("PUSH type=ClusterLoadAssignment ").await?;
    if push.ends_with(" resources=1") {
        // Sent for the new version before Envoy asked for `api` too; its request follows.
        push = cp.line("PUSH type=ClusterLoadAssignment ").await?;
    }
    assert!(
        push.starts_with(&format!("PUSH type=ClusterLoadAssignment version={two} "))
            && push.ends_with(" resources=2"),
        "{push}"
    );
    assert_eq!(
        cp.line("ACK type=ClusterLoadAssignment ").await?,
        format!("ACK type=ClusterLoadAssignment version={two} node=default.dp-1")
    );
    Ok(())
}

/// An EDS cluster `name` over ADS and its ClusterLoadAssignment, as golden resources.
fn eds_cluster(name: &str) -> String {
    format!(
        "- name: {name}
  resource:
    '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: {name}
    type: EDS
    connectTimeout: 1s
    edsClusterConfig: {{edsConfig: {{ads: {{}}, resourceApiVersion: V3}}}}
- name: {name}
  resource:
    '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
    clusterName: {name}
    endpoints: [{{lbEndpoints: [{{endpoint: {{address: {{socketAddress: {{address: 127.0.0.1, portValue: 9}}}}}}}}]}}]
"
    )
}

/// A gRPC server that answers every ADS stream with a broken message: bytes that are not a
/// DiscoveryResponse, then a frame cut off mid-message, in turn. Returns how many streams it
/// answered.
async fn broken_grpc_server(listener: TcpListener) -> Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let streams = Arc::new(AtomicUsize::new(0));
    let counter = streams.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        // gRPC framing: flag byte, 4-byte big-endian length, message.
                        let frame: Vec<u8> = if n.is_multiple_of(2) {
                            [&[0u8, 0, 0, 0, 4][..], &[0xff, 0xff, 0xff, 0xff]].concat()
                        } else {
                            [&[0u8, 0, 0, 3, 0xe8][..], &[0x0a, 0x01, b'1']].concat()
                        };
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(http_body_util::Full::new(bytes::Bytes::from(frame)));
                        async move { response }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    streams
}

#[tokio::test]
async fn undecodable_or_cut_off_messages_end_the_stream_and_the_client_reconnects() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let streams = broken_grpc_server(listener).await;
    let mut client = start_client(addr, TokenSource::None)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while streams.load(std::sync::atomic::Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!client.task.is_finished(), "the client task ended");
    assert!(
        client.offers.try_recv().is_err(),
        "a broken message was offered"
    );
    Ok(())
}

#[tokio::test]
async fn a_push_over_tonics_default_4_mib_is_accepted() -> Result<()> {
    use bearing_xds::envoy_types::pb::envoy::config::core::v3::{
        transport_socket, TransportSocket,
    };
    // 12,000 clusters of ~450 bytes each: one Cluster response of about 5.5 MB.
    let clusters: Vec<Any> = (0..12_000)
        .map(|i| {
            to_any(&Cluster {
                name: format!("backend-{i}_default_svc_80"),
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
                        value: vec![0; 350],
                    })),
                }),
                ..Default::default()
            })
        })
        .collect();
    let size: usize = clusters.iter().map(|c| c.value.len()).sum();
    assert!(size > 5 << 20, "{size} bytes");
    let mut big = resources(&[]);
    big.insert(Cluster::type_url(), clusters);
    let cp = start_cp("127.0.0.1:0", TestCpConfig::default(), big).await?;
    let mut events = cp.events();
    let version = cp.snapshot().version.clone();
    let started = std::time::Instant::now();
    let mut client = start_client(cp.addr(), TokenSource::None)?;
    wait_all_acked(&mut events, &version).await?;
    let state = client
        .wait_kept(|s| s.version(ResourceType::Cluster) == version)
        .await?;
    assert_eq!(state.get(ResourceType::Cluster).resources.len(), 12_000);
    eprintln!(
        "12,000 clusters ({size} bytes) pushed, checked and ACKed in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snapshot_is_announced_before_it_is_pushed() -> Result<()> {
    let (cp, mut events, first) = backend_cp().await?;
    let mut client = start_client(cp.addr(), TokenSource::None)?;
    wait_all_acked(&mut events, &first).await?;
    let cp = Arc::new(cp);
    let pusher = cp.clone();
    // Pushed from another thread while the stream runs, as the file watcher does.
    let versions = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|i| pusher.set_resources(resources(&[&format!("backend-{i}")])))
            .collect::<Vec<_>>()
    })
    .await?;
    let last = versions.last().context("versions")?.clone();
    client
        .wait_kept(|s| ResourceType::ALL.iter().all(|t| s.version(*t) == last))
        .await?;
    let mut announced = std::collections::BTreeSet::new();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Snapshot { version, .. } => {
                announced.insert(version);
            }
            Event::Push { version, .. } | Event::Ack { version, .. } => {
                assert!(
                    announced.contains(&version),
                    "{version} pushed or acked before announced"
                );
            }
            _ => {}
        }
    }
    assert!(announced.contains(&last));
    Ok(())
}

#[tokio::test]
async fn a_control_plane_that_goes_silent_is_left_after_the_keepalive_and_reconnected() -> Result<()>
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    // Accepts TCP and reads everything, never writing a byte (a peer behind a dead network
    // path): no HTTP/2 SETTINGS, no PING answer.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let client = start_client(addr, TokenSource::None)?;
    // HTTP/2 keepalive: a PING after 15 s without traffic, the connection dropped when no
    // answer came 15 s later; then a new connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while connections.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client stayed on a silent control plane"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!client.task.is_finished());
    Ok(())
}

/// The next response of a raw ADS stream.
async fn next_response<T>(responses: &mut tonic::Streaming<T>) -> Result<T> {
    tokio::time::timeout(WAIT, responses.message())
        .await?
        .map_err(anyhow::Error::from)?
        .context("the stream ended")
}

#[tokio::test]
async fn named_subscriptions_get_their_resources_and_an_answer_when_the_names_change() -> Result<()>
{
    use bearing_xds::envoy_types::pb::envoy::config::core::v3::Node;
    use bearing_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use bearing_xds::envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    let mut snapshot = resources(&["a", "b"]);
    snapshot.insert(
        ClusterLoadAssignment::type_url(),
        ["a", "b"]
            .iter()
            .map(|n| named::<ClusterLoadAssignment>(n, |c| &mut c.cluster_name))
            .collect(),
    );
    let cp = start_cp("127.0.0.1:0", TestCpConfig::default(), snapshot).await?;
    let mut ads = AggregatedDiscoveryServiceClient::new(
        cp_endpoint(&format!("http://{}", cp.addr()))?.connect_lazy(),
    );
    let (requests, outbound) = mpsc::channel(8);
    let eds = |names: &[&str], answered: Option<&DiscoveryResponse>| DiscoveryRequest {
        type_url: ClusterLoadAssignment::type_url(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: answered.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: answered.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut first_request = eds(&["a"], None);
    first_request.node = Some(Node {
        id: "default.dp-1".into(),
        ..Default::default()
    });
    requests.send(first_request).await?;
    let mut responses = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let names_of = |response: &DiscoveryResponse| -> Vec<String> {
        response
            .resources
            .iter()
            .filter_map(|any| {
                ResourceType::ClusterLoadAssignment
                    .decode_name(&any.value)
                    .ok()
            })
            .collect()
    };
    let first = next_response(&mut responses).await?;
    assert_eq!(names_of(&first), ["a"]);
    // The ACK that also asks for `b` (Envoy after a new EDS cluster): answered with both.
    requests.send(eds(&["a", "b"], Some(&first))).await?;
    let second = next_response(&mut responses).await?;
    assert_eq!(
        (names_of(&second), &second.version_info),
        (vec!["a".to_string(), "b".to_string()], &first.version_info)
    );
    // An ACK with the same names is not answered.
    requests.send(eds(&["a", "b"], Some(&second))).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), responses.message())
            .await
            .is_err()
    );
    Ok(())
}
