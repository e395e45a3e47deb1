//! MeshLoadBalancingStrategy as kuma-cp renders it, enforced by a sidecar fed only by
//! `bearing-test-cp`, three origins behind each outbound of the demo client:
//!
//! - the golden `meshloadbalancingstrategy/outbound-route-ringhash`'s outbound (RING_HASH,
//!   100..10000 points; its routes hash `x-header-for-test-server`, `/test-route-2` hashes
//!   `x-header-for-test-route-2`): every request of one header value reaches one origin,
//!   different values reach different origins, the route's own header counts on
//!   `/test-route-2` and the other one does not; requests without the header spread;
//! - the golden `outbound-maglev`'s outbound (MAGLEV, table 17, the `session_id` cookie)
//!   likewise by cookie;
//! - LEAST_REQUEST with 5 choices over the 3 origins: while one slow request holds an
//!   origin, at most 2 of 30 quick requests go to it (it is picked only when all 5 draws are
//!   it: 1 in 243; about 10 would at random), and quick ones spread; RANDOM spreads.
//!
//! Then Envoy 1.40, fed the same resources by the same CP in the client's place, does the
//! same, and sends each header value and cookie to the very origin Bearing chose: the ring,
//! the table and the request hashes are Envoy's.
//!
//! Weighted endpoints as kuma-cp renders a service in two zones (a local endpoint of weight
//! 1, the other zone's ingress of weight 3, each in its zone's locality) split 400 requests
//! by weight under round robin, ring hash and Maglev, and evenly under random, as Envoy
//! 1.40 does; the ring and the table pick the very origin Envoy's do for each key.
//!
//! Generated cookies (a cookie hash policy with a ttl), filter-state hash policies, least
//! request's active request bias and ring hash and Maglev over weighted localities, each
//! against Envoy 1.40 (`generated_cookies_and_biased_least_request_as_envoy`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;
use serde_json::{json, Value};
use xxhash_rust::xxh64::xxh64;

/// The test CP binary.
const TEST_CP: &str = env!("CARGO_BIN_EXE_bearing-test-cp");

const DIR: &str = "envoyconfig-e2e/sidecars/meshloadbalancingstrategy";
/// The mesh of the goldens.
const MESH: &str = "envoyconfig";
/// The MeshService cluster of test-server in the goldens.
const SERVER_CLUSTER: &str = "envoyconfig_test-server__kuma-3_msvc_80";
/// The origins' ports on the backend host.
const ORIGINS: [u16; 3] = [8081, 8082, 8083];

/// The outbounds: (listener port, cluster name, what it shows).
const RING: (u16, &str) = (10001, "ring");
const MAGLEV: (u16, &str) = (10002, "maglev");
const LEAST: (u16, &str) = (10003, "least");
const RANDOM: (u16, &str) = (10004, "random");
const MURMUR: (u16, &str) = (10005, "murmur");

/// A python client in `host` that sends each of `requests` (path, header lines) `times`
/// times to 127.0.0.1:`port` over one keep-alive connection per request, and prints the
/// origin of each answer (`X-Served-By`) on its line, space-separated.
fn served_by(
    host: &Host,
    port: u16,
    requests: &[(String, Vec<String>)],
    times: u32,
) -> Result<Vec<Vec<String>>> {
    let spec = serde_json::to_string(requests)?;
    let script = format!(
        r#"
import http.client, json
for path, headers in json.loads({spec:?}):
    seen = []
    for _ in range({times}):
        c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
        h = dict(line.split(": ", 1) for line in headers)
        c.request("GET", path, headers=h)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        seen.append(r.getheader("x-served-by"))
        c.close()
    print(" ".join(seen))
"#
    );
    let out = host.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "the client failed: {out:?}");
    Ok(out
        .stdout
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect())
}

/// One request to 127.0.0.1:`port` held 3 s by its origin and, while it is held, `quick`
/// quick ones: the slow one's origin first, then each quick one's.
fn quick_beside_slow(host: &Host, port: u16, quick: usize) -> Result<Vec<String>> {
    let script = format!(
        r#"
import http.client, threading, time
def get(path):
    c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.getheader("x-served-by")
slow = []
t = threading.Thread(target=lambda: slow.append(get("/slow?delay=3")))
t.start()
time.sleep(0.5)
quick = [get("/") for _ in range({quick})]
t.join()
print(" ".join(slow + quick))
"#
    );
    let out = host.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "the client failed: {out:?}");
    Ok(out.stdout.split_whitespace().map(str::to_string).collect())
}

/// The golden's server cluster as plaintext HTTP/1.1 (the balancing is the client's),
/// named `name`, with `edit` applied.
fn server_cluster(golden: &KumaGolden, name: &str, edit: impl FnOnce(&mut Value)) -> Result<Value> {
    let mut cluster = golden.plaintext_cluster(SERVER_CLUSTER, &[])?;
    replace_in_strings(&mut cluster, SERVER_CLUSTER, name);
    edit(&mut cluster);
    Ok(cluster)
}

/// The golden's outbound to the server, its routes sending to `cluster`, on 127.0.0.1:`port`.
fn outbound(golden: &KumaGolden, web: &Host, port: u16, cluster: &str) -> Result<Value> {
    let mut listener = golden.listener("outbound:IP_REDACTED:80")?;
    replace_in_strings(&mut listener, SERVER_CLUSTER, cluster);
    replace_in_strings(&mut listener, "IP_REDACTED", &web.ip4().to_string());
    let mut bound = bound_listener(listener, ([127, 0, 0, 1], port).into());
    bound["name"] = json!(format!("outbound:127.0.0.1:{port}"));
    Ok(bound)
}

/// What one proxy did: the origin of each ring header value, each Maglev cookie, each
/// header value on the MurmurHash2 ring.
type Choices = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
);

/// An edit of a golden cluster balancing by `lb` instead (LEAST_REQUEST with 5 choices).
fn lb_policy(lb: &'static str) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| {
        let object = c.as_object_mut().expect("a cluster object");
        object.remove("ringHashLbConfig");
        object.insert("lbPolicy".into(), json!(lb));
        if lb == "LEAST_REQUEST" {
            object.insert("leastRequestLbConfig".into(), json!({"choiceCount": 5}));
        }
    }
}

/// Every request of one key went to one origin; the keys reached at least two origins.
/// Gives each key's origin.
fn sticky(
    proxy: &str,
    what: &str,
    keys: &[String],
    seen: &[Vec<String>],
) -> Result<BTreeMap<String, String>> {
    let mut chosen = BTreeMap::new();
    for (key, origins) in keys.iter().zip(seen) {
        let distinct: BTreeSet<&String> = origins.iter().collect();
        ensure!(
            distinct.len() == 1,
            "{proxy}: {what} {key} reached {origins:?}"
        );
        chosen.insert(key.clone(), origins[0].clone());
    }
    let spread: BTreeSet<&String> = chosen.values().collect();
    ensure!(
        spread.len() >= 2,
        "{proxy}: every {what} reached {spread:?}"
    );
    Ok(chosen)
}

/// The origin of each of `keys`, sent once to 127.0.0.1:`port` from `web` with the header
/// line `prefix` followed by the key (a hashed header, or `cookie: <name>=`).
fn key_origins(web: &Host, port: u16, prefix: &str, keys: &[String]) -> Result<Vec<String>> {
    let requests: Vec<(String, Vec<String>)> = keys
        .iter()
        .map(|k| ("/".to_string(), vec![format!("{prefix}{k}")]))
        .collect();
    Ok(served_by(web, port, &requests, 1)?
        .into_iter()
        .flatten()
        .collect())
}

/// The keys whose origins differ between `ours` and `theirs`, each the origins of `keys` in
/// order, once per port asked.
fn keys_differing<'k>(keys: &'k [String], ours: &[String], theirs: &[String]) -> Vec<&'k String> {
    keys.iter()
        .cycle()
        .zip(ours.iter().zip(theirs))
        .filter(|(_, (a, b))| a != b)
        .map(|(k, _)| k)
        .collect()
}

/// The origins of `seen`, all of them.
fn origins_of(seen: &[Vec<String>]) -> BTreeSet<String> {
    seen.iter().flatten().cloned().collect()
}

fn check(proxy: &str, web: &Host) -> Result<Choices> {
    let values: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    // Ring hash by the route's header.
    let by_header = |path: &str, header: &str| -> Vec<(String, Vec<String>)> {
        let line = |v: &String| vec![format!("{header}: {v}")];
        values.iter().map(|v| (path.to_string(), line(v))).collect()
    };
    let seen = served_by(web, RING.0, &by_header("/", "x-header-for-test-server"), 4)?;
    let ring = sticky(proxy, "x-header-for-test-server", &values, &seen)?;
    // `/test-route-2` hashes its own header: stickiness by it, and the same origins (one
    // ring, the same hashes).
    let seen = served_by(
        web,
        RING.0,
        &by_header("/test-route-2", "x-header-for-test-route-2"),
        3,
    )?;
    let route2 = sticky(proxy, "x-header-for-test-route-2", &values, &seen)?;
    ensure!(
        route2 == ring,
        "{proxy}: /test-route-2 by its header {route2:?}, / {ring:?}"
    );
    // There the other header is not read: no hash, random picks.
    let other = vec![(
        "/test-route-2".to_string(),
        vec!["x-header-for-test-server: user-1".to_string()],
    )];
    let seen = served_by(web, RING.0, &other, 30)?;
    ensure!(
        origins_of(&seen).len() >= 2,
        "{proxy}: /test-route-2 by another header: {seen:?}"
    );
    let none = vec![("/".to_string(), Vec::new())];
    let seen = served_by(web, RING.0, &none, 30)?;
    ensure!(
        origins_of(&seen).len() >= 2,
        "{proxy}: ring hash without a hash: {seen:?}"
    );

    // Maglev by cookie.
    let cookies: Vec<(String, Vec<String>)> = values
        .iter()
        .map(|v| {
            (
                "/".to_string(),
                vec![format!("cookie: a=1; session_id={v}")],
            )
        })
        .collect();
    let seen = served_by(web, MAGLEV.0, &cookies, 4)?;
    let maglev = sticky(proxy, "session_id", &values, &seen)?;
    // The ring's points hashed with MurmurHash2.
    let seen = served_by(
        web,
        MURMUR.0,
        &by_header("/", "x-header-for-test-server"),
        3,
    )?;
    let murmur = sticky(proxy, "x-header-for-test-server (murmur)", &values, &seen)?;

    // Least request over 3 origins with 5 choices: the origin a slow request holds is
    // picked only when every draw is it.
    let seen = quick_beside_slow(web, LEAST.0, 30)?;
    let (slow, quick) = seen.split_first().context("the slow request's origin")?;
    let busy = quick.iter().filter(|o| *o == slow).count();
    ensure!(
        quick.len() == 30 && busy <= 2,
        "{proxy}: least request sent {busy} of {} quick requests to {slow}, busy: {quick:?}",
        quick.len()
    );
    for port in [LEAST.0, RANDOM.0] {
        let seen = served_by(web, port, &none, 30)?;
        ensure!(
            origins_of(&seen).len() == 3,
            "{proxy}: port {port} reached {seen:?}"
        );
    }
    Ok((ring, maglev, murmur))
}

/// What the tests here start from, in a topology of cp, web and backend: the CP's PKI, the
/// client's mesh identity, the three origins on the backend, and the ring hash and Maglev
/// goldens.
struct Rig {
    pki: CpPki,
    mesh_ca: TestCa,
    leaf: CertFiles,
    _origins: Vec<HttpServer>,
    ring: KumaGolden,
    maglev: KumaGolden,
    /// The ring golden's server endpoints.
    assignment: Value,
}

impl Rig {
    /// The rig in `topo`, its PKI named `name`.
    fn new(topo: &Topology, name: &str) -> Result<Rig> {
        let pki = CpPki::new(topo.dir(), name, topo.host("cp"))?;
        let mesh_ca = TestCa::new(&pki.dir, "mesh-ca")?;
        let leaf = mesh_ca.issue("demo-client", &["URI:spiffe://envoyconfig/demo-client"])?;
        let backend = topo.host("backend");
        let origins = ORIGINS
            .iter()
            .map(|port| start_http_server(backend, *port))
            .collect::<Result<Vec<_>>>()?;
        let golden =
            |file: &str| KumaGolden::load(&format!("{DIR}/{file}.demo-client.golden.json"));
        let ring = golden("outbound-route-ringhash")?;
        let assignment = ring.endpoints(SERVER_CLUSTER)?;
        Ok(Rig {
            pki,
            mesh_ca,
            leaf,
            _origins: origins,
            ring,
            maglev: golden("outbound-maglev")?,
            assignment,
        })
    }

    /// Resources holding the client's golden inbound on `web`.
    fn xds(&self, web: &Host) -> Result<XdsFile> {
        let mut xds = XdsFile::new();
        xds.golden_inbound(&self.ring, 3000, 3000, web.sock4(GOLDEN_INBOUND_PORT))?;
        Ok(xds)
    }

    /// The golden's server endpoints, as those of the cluster `name`.
    fn endpoints(&self, name: &str) -> Value {
        let mut value = self.assignment.clone();
        replace_in_strings(&mut value, SERVER_CLUSTER, name);
        value
    }
}

#[test]
fn load_balancing_policies_stick_by_hash_and_spread() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let rig = Rig::new(&topo, "cp-lb")?;
    let (pki, mut xds) = (&rig.pki, rig.xds(web)?);
    let at: Vec<_> = ORIGINS.iter().map(|p| backend.sock4(*p)).collect();
    let policy = lb_policy;
    xds.cluster(server_cluster(&rig.ring, RING.1, |_| {})?)?
        .endpoints(rig.endpoints(RING.1), &at)?
        .listener(outbound(&rig.ring, web, RING.0, RING.1)?)?
        .cluster(server_cluster(&rig.maglev, MAGLEV.1, |_| {})?)?
        .endpoints(rig.endpoints(MAGLEV.1), &at)?
        .listener(outbound(&rig.maglev, web, MAGLEV.0, MAGLEV.1)?)?
        .cluster(server_cluster(&rig.ring, LEAST.1, policy("LEAST_REQUEST"))?)?
        .endpoints(rig.endpoints(LEAST.1), &at)?
        .listener(outbound(&rig.ring, web, LEAST.0, LEAST.1)?)?
        .cluster(server_cluster(&rig.ring, MURMUR.1, |c| {
            c["ringHashLbConfig"]["hashFunction"] = json!("MURMUR_HASH_2");
        })?)?
        .endpoints(rig.endpoints(MURMUR.1), &at)?
        .listener(outbound(&rig.ring, web, MURMUR.0, MURMUR.1)?)?
        .cluster(server_cluster(&rig.ring, RANDOM.1, policy("RANDOM"))?)?
        .endpoints(rig.endpoints(RANDOM.1), &at)?
        .listener(outbound(&rig.ring, web, RANDOM.0, RANDOM.1)?)?
        .mesh_identity(MESH, &rig.leaf, &rig.mesh_ca)?;
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = check("bearing", web)?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [RING.0, MAGLEV.0, LEAST.0, RANDOM.0, MURMUR.0] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    let envoy = check("envoy", web)?;
    for (what, ours, theirs) in [
        ("ring hash", &bearing.0, &envoy.0),
        ("maglev", &bearing.1, &envoy.1),
        ("murmur ring hash", &bearing.2, &envoy.2),
    ] {
        ensure!(
            ours == theirs,
            "{what}: bearing chose {ours:?}, envoy {theirs:?}"
        );
    }
    Ok(())
}

/// The listener ports of ring hash and Maglev over weighted localities of which one has
/// only a dead endpoint, with an active health check, and their clusters.
const DEAD_ZONE_RING: (u16, &str) = (10017, "dead-zone-ring");
const DEAD_ZONE_MAGLEV: (u16, &str) = (10018, "dead-zone-maglev");

/// Ring hash and Maglev on a cluster with an active health check (MeshLoadBalancingStrategy
/// beside MeshHealthCheck), four endpoints of which one has no server: once the checks have
/// run, every header value or cookie sticks to one of the three live origins, never the dead
/// one (the ring and the table are rebuilt over the healthy hosts), and Envoy 1.40 fed the
/// same resources sends each value to the very origin Bearing chose. The same over weighted
/// localities (zone-1 and zone-2 of weight 1 with a live origin each, zone-3 of weight 2 with
/// the dead endpoint): Envoy still counts zone-3's weight when it normalises the others', so
/// its ring has half the points it would have without zone-3; 200 header values and 200
/// cookies reach the very origins Envoy's do.
#[test]
fn hashing_balancers_rebuild_over_the_healthy_hosts_as_envoy() -> Result<()> {
    const DEAD: u16 = 8089;
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let rig = Rig::new(&topo, "cp-lb-health")?;
    let (pki, mut xds) = (&rig.pki, rig.xds(web)?);
    let mut at: Vec<_> = ORIGINS.iter().map(|p| backend.sock4(*p)).collect();
    at.insert(1, backend.sock4(DEAD));
    let checked = |c: &mut Value| {
        c["healthChecks"] = json!([{"timeout": "1s", "interval": "1s", "unhealthyThreshold": 1,
            "healthyThreshold": 1, "httpHealthCheck": {"path": "/"}}]);
    };
    xds.cluster(server_cluster(&rig.ring, RING.1, checked)?)?
        .endpoints(rig.endpoints(RING.1), &at)?
        .listener(outbound(&rig.ring, web, RING.0, RING.1)?)?
        .cluster(server_cluster(&rig.maglev, MAGLEV.1, checked)?)?
        .endpoints(rig.endpoints(MAGLEV.1), &at)?
        .listener(outbound(&rig.maglev, web, MAGLEV.0, MAGLEV.1)?)?
        .mesh_identity(MESH, &rig.leaf, &rig.mesh_ca)?;
    let zones = [
        ("zone-1", 1, &[backend.sock4(ORIGINS[0])][..]),
        ("zone-2", 1, &[backend.sock4(ORIGINS[1])][..]),
        ("zone-3", 2, &[backend.sock4(DEAD)][..]),
    ];
    for ((port, name), golden) in [(DEAD_ZONE_RING, &rig.ring), (DEAD_ZONE_MAGLEV, &rig.maglev)] {
        let mut cluster = server_cluster(golden, name, checked)?;
        cluster["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
        xds.cluster(cluster)?
            .add(ENDPOINTS, name, locality_endpoints(&rig, name, &zones))
            .listener(outbound(golden, web, port, name)?)?;
    }
    let dead = format!("{}:{DEAD}", backend.ip4());
    let values: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let many: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    // Per key, the origin a zoned ring (by header) and table (by cookie) send it to.
    let zoned = |proxy: &str| -> Result<Vec<String>> {
        let mut all = Vec::new();
        for (port, prefix) in [
            (DEAD_ZONE_RING.0, "x-header-for-test-server: "),
            (DEAD_ZONE_MAGLEV.0, "cookie: session_id="),
        ] {
            let seen = key_origins(web, port, prefix, &many)?;
            ensure!(
                seen.len() == 200 && seen.iter().all(|o| o.starts_with("backend:")),
                "{proxy}: port {port} answered {seen:?}"
            );
            all.extend(seen);
        }
        Ok(all)
    };
    // Once the dead endpoint failed its check every key is answered by a live origin.
    let zoned_when_checked = |proxy: &str| -> Result<Vec<String>> {
        let mut answered = None;
        wait_until(Duration::from_secs(30), || {
            answered = zoned(proxy).ok();
            answered.is_some()
        })
        .with_context(|| format!("{proxy}: the zoned ring and table kept failing"))?;
        answered.context("the zoned answers")
    };
    let check = |proxy: &str| -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
        let header: Vec<(String, Vec<String>)> = values
            .iter()
            .map(|v| {
                (
                    "/".to_string(),
                    vec![format!("x-header-for-test-server: {v}")],
                )
            })
            .collect();
        let cookie: Vec<(String, Vec<String>)> = values
            .iter()
            .map(|v| ("/".to_string(), vec![format!("cookie: session_id={v}")]))
            .collect();
        // The checks have run when every request of a round is answered by a live origin.
        let mut chosen = None;
        wait_until(Duration::from_secs(20), || {
            let ring = served_by(web, RING.0, &header, 2);
            let maglev = served_by(web, MAGLEV.0, &cookie, 2);
            let (Ok(ring), Ok(maglev)) = (ring, maglev) else {
                return false;
            };
            let all = ring.iter().chain(&maglev).flatten();
            let live = all.clone().all(|o| !o.is_empty() && *o != dead && o != "-");
            if live {
                chosen = Some((ring, maglev));
            }
            live
        })
        .with_context(|| format!("{proxy}: requests kept reaching the dead endpoint"))?;
        let (ring, maglev) = chosen.context("the last round")?;
        Ok((
            sticky(proxy, "x-header-for-test-server", &values, &ring)?,
            sticky(proxy, "session_id", &values, &maglev)?,
        ))
    };
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = check("bearing")?;
    let bearing_zoned = zoned_when_checked("bearing")?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [RING.0, MAGLEV.0, DEAD_ZONE_RING.0, DEAD_ZONE_MAGLEV.0] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    let envoy = check("envoy")?;
    ensure!(
        bearing == envoy,
        "bearing chose {bearing:?}\nenvoy {envoy:?}"
    );
    let envoy_zoned = zoned_when_checked("envoy")?;
    let differ = keys_differing(&many, &bearing_zoned, &envoy_zoned);
    ensure!(
        differ.is_empty(),
        "zoned ring and table with a dead zone: bearing and envoy differ on {differ:?}"
    );
    Ok(())
}

/// Kuma's multizone endpoints: `at` with their weights, each in a locality of its own zone,
/// keeping the golden's first endpoint's metadata, as the assignment of `cluster`; with
/// `localities`, the weights are the localities' (kuma-cp's locality awareness, with its
/// overprovisioning factor 200) and the endpoints' are left unset.
fn zone_endpoints(
    rig: &Rig,
    cluster: &str,
    at: &[(std::net::SocketAddr, u32)],
    localities: bool,
) -> Value {
    let endpoint_at = golden_endpoint(rig, cluster);
    let at_localities: Vec<Value> = at
        .iter()
        .enumerate()
        .map(|(i, (addr, weight))| {
            let mut endpoint = endpoint_at(addr);
            let mut locality =
                json!({"locality": {"zone": format!("zone-{}", i + 1)}, "lbEndpoints": []});
            match localities {
                true => locality["loadBalancingWeight"] = json!(weight),
                false => endpoint["loadBalancingWeight"] = json!(weight),
            }
            locality["lbEndpoints"] = json!([endpoint]);
            locality
        })
        .collect();
    let mut assignment = json!({"clusterName": cluster, "endpoints": at_localities});
    if localities {
        assignment["policy"] = json!({"overprovisioningFactor": 200});
    }
    assignment
}

/// An endpoint of `cluster` at an address, keeping the golden's first endpoint's metadata.
fn golden_endpoint(rig: &Rig, cluster: &str) -> impl Fn(&std::net::SocketAddr) -> Value {
    let first = rig
        .endpoints(cluster)
        .pointer("/endpoints/0/lbEndpoints/0")
        .cloned()
        .unwrap_or_else(|| json!({}));
    move |addr| {
        let mut endpoint = first.clone();
        endpoint["endpoint"] = json!({"address": {"socketAddress": {
            "address": addr.ip().to_string(), "portValue": addr.port()}}});
        endpoint
    }
}

/// `localities` (zone, weight, endpoints) in this order, as the assignment of `cluster`
/// under locality weighting, each endpoint keeping the golden's first endpoint's metadata.
fn locality_endpoints(
    rig: &Rig,
    cluster: &str,
    localities: &[(&str, u32, &[std::net::SocketAddr])],
) -> Value {
    let endpoint_at = golden_endpoint(rig, cluster);
    let endpoints: Vec<Value> = localities
        .iter()
        .map(|(zone, weight, at)| {
            let lb: Vec<Value> = at.iter().map(&endpoint_at).collect();
            json!({"locality": {"zone": zone}, "loadBalancingWeight": weight, "lbEndpoints": lb})
        })
        .collect();
    json!({"clusterName": cluster, "endpoints": endpoints})
}

/// How many of `seen`'s answers each origin gave.
fn tally(seen: &[Vec<String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for origin in seen.iter().flatten() {
        *counts.entry(origin.clone()).or_default() += 1;
    }
    counts
}

/// Endpoints of weights 1 and 3 (kuma-cp's local endpoint and another zone's ingress for a
/// zone of 3 instances), and localities of weights 1 and 3 under locality-weighted balancing
/// (round robin and random: the locality by Envoy's EDF schedule, one endpoint in each): 400
/// requests split 100/300 under round robin and least request one at a time (weights
/// divided by 1 active request: round robin's order) (Envoy's EDF schedule;
/// Envoy starts its schedule at a random pick, so its split may differ by the picks of an
/// unfinished cycle: within 2), by ring and table share under ring hash and Maglev (each of
/// 400 keys reaching the very origin Envoy 1.40 sends it to), and about evenly under random,
/// which ignores weights in Envoy too; a locality without a weight beside a weighted one
/// gets none of 400.
#[test]
fn weighted_endpoints_split_by_weight_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let rig = Rig::new(&topo, "cp-lb-weights")?;
    let (pki, mut xds) = (&rig.pki, rig.xds(web)?);
    let (light, heavy) = (backend.sock4(ORIGINS[0]), backend.sock4(ORIGINS[1]));
    let at = [(light, 1), (heavy, 3)];
    let round_robin = (10006, "weighted-rr");
    let least = (10009, "weighted-least");
    // Locality-weighted round robin and random.
    let (by_locality, random_locality) = ((10007, "locality-rr"), (10008, "locality-random"));
    for (port, name, golden, edit, localities) in [
        (
            round_robin.0,
            round_robin.1,
            &rig.ring,
            Some("ROUND_ROBIN"),
            false,
        ),
        (RANDOM.0, RANDOM.1, &rig.ring, Some("RANDOM"), false),
        (least.0, least.1, &rig.ring, Some("LEAST_REQUEST"), false),
        (RING.0, RING.1, &rig.ring, None, false),
        (MAGLEV.0, MAGLEV.1, &rig.maglev, None, false),
        (
            by_locality.0,
            by_locality.1,
            &rig.ring,
            Some("ROUND_ROBIN"),
            true,
        ),
        (
            random_locality.0,
            random_locality.1,
            &rig.ring,
            Some("RANDOM"),
            true,
        ),
    ] {
        let mut cluster = match edit {
            Some(lb) => server_cluster(golden, name, lb_policy(lb))?,
            None => server_cluster(golden, name, |_| {})?,
        };
        if localities {
            cluster["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
        }
        xds.cluster(cluster)?
            .add(ENDPOINTS, name, zone_endpoints(&rig, name, &at, localities))
            .listener(outbound(golden, web, port, name)?)?;
    }
    // A locality without a weight beside a weighted one (kuma-cp's Cluster turning locality
    // weighting on before the assignment that weighs its localities): no traffic in Envoy.
    let idle = (10010, "locality-idle");
    let mut assignment = zone_endpoints(&rig, idle.1, &at, true);
    if let Some(first) = assignment
        .pointer_mut("/endpoints/0")
        .and_then(Value::as_object_mut)
    {
        first.remove("loadBalancingWeight");
    }
    let mut cluster = server_cluster(&rig.ring, idle.1, lb_policy("ROUND_ROBIN"))?;
    cluster["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
    xds.cluster(cluster)?
        .add(ENDPOINTS, idle.1, assignment)
        .listener(outbound(&rig.ring, web, idle.0, idle.1)?)?;
    xds.mesh_identity(MESH, &rig.leaf, &rig.mesh_ca)?;
    // The origins' names in `X-Served-By`.
    let (light, heavy) = (
        format!("backend:{}", ORIGINS[0]),
        format!("backend:{}", ORIGINS[1]),
    );
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    // Per proxy: the round robin and random splits, each key's origin on the ring and table.
    let check = |proxy: &str| -> Result<(usize, Vec<String>, Vec<String>)> {
        let plain = vec![("/".to_string(), Vec::new())];
        let split = |port| -> Result<(usize, usize)> {
            let counts = tally(&served_by(web, port, &plain, 400)?);
            let count = |o: &String| counts.get(o).copied().unwrap_or(0);
            ensure!(
                count(&light) + count(&heavy) == 400,
                "{proxy}: port {port} answered by {counts:?}"
            );
            Ok((count(&light), count(&heavy)))
        };
        let (rr, _) = split(round_robin.0)?;
        ensure!(
            (98..=102).contains(&rr),
            "{proxy}: round robin sent {rr} of 400 to the weight-1 endpoint"
        );
        // Least request with one request at a time: weights divided by 1, as round robin.
        for port in [least.0, by_locality.0, random_locality.0] {
            let (light, _) = split(port)?;
            ensure!(
                (98..=102).contains(&light),
                "{proxy}: port {port} sent {light} of 400 to the weight-1 endpoint or locality"
            );
        }
        let (unweighted, _) = split(idle.0)?;
        ensure!(
            unweighted == 0,
            "{proxy}: {unweighted} of 400 went to the locality without a weight"
        );
        let (random, _) = split(RANDOM.0)?;
        ensure!(
            (140..=260).contains(&random),
            "{proxy}: random sent {random} of 400 to the weight-1 endpoint"
        );
        let keyed = |port, prefix| -> Result<Vec<String>> {
            let seen = key_origins(web, port, prefix, &keys)?;
            let light_share = seen.iter().filter(|o| **o == light).count();
            ensure!(
                (50..=150).contains(&light_share),
                "{proxy}: port {port} sent {light_share} of 400 keys to the weight-1 endpoint"
            );
            Ok(seen)
        };
        let ring = keyed(RING.0, "x-header-for-test-server: ")?;
        let maglev = keyed(MAGLEV.0, "cookie: session_id=")?;
        Ok((rr, ring, maglev))
    };
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = check("bearing")?;
    ensure!(
        bearing.0 == 100,
        "bearing: round robin sent {} of 400",
        bearing.0
    );

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [
        round_robin.0,
        RANDOM.0,
        least.0,
        RING.0,
        MAGLEV.0,
        by_locality.0,
        random_locality.0,
    ] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    let envoy = check("envoy")?;
    for (what, ours, theirs) in [
        ("ring hash", &bearing.1, &envoy.1),
        ("maglev", &bearing.2, &envoy.2),
    ] {
        let differ = keys_differing(&keys, ours, theirs);
        ensure!(
            differ.is_empty(),
            "{what}: bearing and envoy differ on {differ:?}"
        );
    }
    Ok(())
}

/// The listener port of the route generating its cookie, and its cluster.
const COOKIE: (u16, &str) = (10011, "cookie");
/// The listener port of least request with an active request bias, and its cluster.
const BIASED: (u16, &str) = (10012, "biased");
/// The listener ports of ring hash and Maglev over weighted localities, and their clusters.
const ZONED_RING: (u16, &str) = (10013, "zoned-ring");
const ZONED_MAGLEV: (u16, &str) = (10014, "zoned-maglev");

/// `value` with every route action that hashes (has a `hashPolicy`) hashing by `policies`
/// and retrying as `retry`.
fn set_hash_policies(value: &mut Value, policies: &Value, retry: &Value) {
    match value {
        Value::Object(map) if map.contains_key("hashPolicy") => {
            map.insert("hashPolicy".into(), policies.clone());
            map.insert("retryPolicy".into(), retry.clone());
        }
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| set_hash_policies(v, policies, retry)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| set_hash_policies(v, policies, retry)),
        _ => {}
    }
}

/// The `Set-Cookie` Envoy writes for the cookie route's cookie generated on a connection
/// from 127.0.0.1:`client` to 127.0.0.1:`port`: the value is the hex xxHash64 of both
/// addresses.
fn set_cookie(client: u64, port: u16) -> String {
    let addresses = format!("127.0.0.1:{client}127.0.0.1:{port}");
    let value = format!("{:016x}", xxh64(addresses.as_bytes(), 0));
    format!("session_id=\"{value}\"; Max-Age=3600; Path=/; HttpOnly")
}

/// What a proxy did on the cookie route: each generated cookie's value with the origin of
/// its first request, the origin of each of `replayed` (brought back as cookies), and the
/// origin of each `x-user`.
struct CookieRun {
    generated: Vec<(String, String)>,
    replayed: Vec<String>,
    users: BTreeMap<String, String>,
}

/// Requests on the cookie route from `web`: 6 without a cookie (each on a connection of its
/// own: each gets the `Set-Cookie` Envoy writes for its connection's addresses, and is
/// hashed by it), each generated value and each of `replay` brought back 3 times (one
/// origin each, nothing set again), one without a cookie answered 503 and retried twice
/// (the cookie set once per try), 12 `x-user` values twice (the header's hash ends the
/// list at the terminal filter-state policy: sticky, no cookie generated).
fn cookie_run(proxy: &str, web: &Host, replay: &[String]) -> Result<CookieRun> {
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let spec = serde_json::to_string(&json!({"replay": replay, "users": users}))?;
    let port = COOKIE.0;
    let script = format!(
        r#"
import http.client, json
def get(headers, path="/", status=200):
    c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
    c.connect()
    local = c.sock.getsockname()[1]
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    r.read()
    assert r.status == status, r.status
    seen = {{"port": local, "origin": r.getheader("x-served-by"),
             "cookies": r.msg.get_all("set-cookie") or []}}
    c.close()
    return seen
spec = json.loads({spec:?})
fresh = [get({{}}) for _ in range(6)]
values = [f["cookies"][0].split('"')[1] for f in fresh if f["cookies"]]
back = lambda v: [get({{"cookie": 'a=1; session_id="%s"' % v}}) for _ in range(3)]
print(json.dumps({{"fresh": fresh, "own": [back(v) for v in values],
                   "retried": get({{}}, "/status/503", 503),
                   "replayed": [back(v) for v in spec["replay"]],
                   "users": [[get({{"x-user": u}}) for _ in range(2)] for u in spec["users"]]}}))
"#
    );
    let out = web.command("python3").args(["-c", &script]).output()?;
    ensure!(out.success(), "{proxy}: the client failed: {out:?}");
    let seen: Value = serde_json::from_str(out.stdout.trim())?;
    let field = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    let set = |v: &Value| v["cookies"].as_array().cloned().unwrap_or_default();
    // One origin for all of a group, which set no cookie.
    let one_origin = |what: &str, group: &Value| -> Result<String> {
        let group = group.as_array().context("a group")?;
        let origins: BTreeSet<String> = group.iter().map(|g| field(g, "origin")).collect();
        ensure!(origins.len() == 1, "{proxy}: {what} reached {origins:?}");
        ensure!(
            group.iter().all(|g| set(g).is_empty()),
            "{proxy}: {what} got a cookie set: {group:?}"
        );
        Ok(origins.into_iter().next().unwrap_or_default())
    };
    let mut generated = Vec::new();
    let fresh = seen["fresh"].as_array().context("fresh")?;
    for (f, own) in fresh.iter().zip(seen["own"].as_array().context("own")?) {
        let client = f["port"].as_u64().context("the client's port")?;
        let expected = set_cookie(client, port);
        let value = expected.split('"').nth(1).unwrap_or_default().to_string();
        ensure!(
            set(f) == [json!(expected)],
            "{proxy}: from port {client} set {:?}, expected {expected:?}",
            set(f)
        );
        let back = one_origin(&format!("cookie {value}"), own)?;
        let first = field(f, "origin");
        ensure!(
            back == first,
            "{proxy}: cookie {value} went to {back}, its first request to {first}"
        );
        generated.push((value, first));
    }
    ensure!(generated.len() == 6, "{proxy}: {fresh:?}");
    // A 503 retried twice: the cookie set once per try, as Envoy's router does.
    let retried = &seen["retried"];
    let client = retried["port"].as_u64().context("the client's port")?;
    let expected = json!(set_cookie(client, port));
    ensure!(
        set(retried) == [expected.clone(), expected.clone(), expected],
        "{proxy}: a request tried 3 times set {:?}",
        set(retried)
    );
    let replayed = seen["replayed"].as_array().context("replayed")?;
    let replayed = replay
        .iter()
        .zip(replayed)
        .map(|(v, group)| one_origin(&format!("cookie {v}"), group))
        .collect::<Result<Vec<_>>>()?;
    let groups = seen["users"].as_array().context("users")?;
    let users = users
        .iter()
        .zip(groups)
        .map(|(u, group)| Ok((u.clone(), one_origin(u, group)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let spread: BTreeSet<&String> = users.values().collect();
    ensure!(
        spread.len() >= 2,
        "{proxy}: every x-user reached {spread:?}"
    );
    Ok(CookieRun {
        generated,
        replayed,
        users,
    })
}

/// A route hashing by `x-user`, then a terminal filter-state policy (kuma-cp's MeshRateLimit
/// key), then the `session_id` cookie with a ttl of 3600 s and path `/`, on Maglev (table
/// 17): a request without the cookie gets `Set-Cookie: session_id="<hex>"; Max-Age=3600;
/// Path=/; HttpOnly` whose value is the hex xxHash64 of its connection's addresses, as Envoy
/// 1.40's router writes it (once per try of a retried request), and goes where the cookie
/// brought back goes (each value sticking to one origin); a request with `x-user` generates none (its hash ends the list
/// at the terminal policy, which gives no hash of its own). LEAST_REQUEST with
/// `activeRequestBias` 0 (kuma-cp's RuntimeDouble) over endpoints of weights 1 and 3
/// picks by weight alone while a slow request is held (bias 1 would shift about 4 of 30
/// picks). Ring hash and Maglev under locality weighting over zone-2 (weight 3) and zone-1
/// (weight 1, two endpoints), in that order, send 3/4 of 200 keys each to zone-2. Envoy
/// 1.40 fed the same resources does the same: the same Set-Cookie shape and value formula,
/// the very origins for Bearing's cookies and for each `x-user`, the same split, the very
/// origin for each key on the zoned ring and table (the locality weights folded into the
/// hosts' in Envoy's order of the localities).
#[test]
fn generated_cookies_and_biased_least_request_as_envoy() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let rig = Rig::new(&topo, "cp-lb-cookies")?;
    let (pki, mut xds) = (&rig.pki, rig.xds(web)?);
    let at: Vec<_> = ORIGINS.iter().map(|p| backend.sock4(*p)).collect();
    let mut listener = outbound(&rig.maglev, web, COOKIE.0, COOKIE.1)?;
    let policies = json!([
        {"header": {"headerName": "x-user"}},
        {"filterState": {"key": "kuma.mesh_rate_limit.match.spiffe_id"}, "terminal": true},
        {"cookie": {"name": "session_id", "ttl": "3600s", "path": "/"}},
    ]);
    let retry = json!({"retryOn": "5xx", "numRetries": 2});
    set_hash_policies(&mut listener, &policies, &retry);
    let (light, heavy) = (backend.sock4(ORIGINS[0]), backend.sock4(ORIGINS[1]));
    let biased = server_cluster(&rig.ring, BIASED.1, |c| {
        lb_policy("LEAST_REQUEST")(c);
        c["leastRequestLbConfig"] = json!({"activeRequestBias": {"defaultValue": 0.0}});
    })?;
    xds.cluster(server_cluster(&rig.maglev, COOKIE.1, |_| {})?)?
        .endpoints(rig.endpoints(COOKIE.1), &at)?
        .listener(listener)?
        .cluster(biased)?
        .add(
            ENDPOINTS,
            BIASED.1,
            zone_endpoints(&rig, BIASED.1, &[(light, 1), (heavy, 3)], false),
        )
        .listener(outbound(&rig.ring, web, BIASED.0, BIASED.1)?)?;
    // Ring hash and Maglev over localities zone-2 (weight 3, one endpoint) and zone-1
    // (weight 1, two endpoints), in that order: Envoy folds the locality weights into the
    // hosts' (1/8, 1/8, 3/4) in its order of the localities (zone-1 first).
    let zoned = [("zone-2", 3, &at[2..3]), ("zone-1", 1, &at[0..2])];
    for ((port, name), golden) in [(ZONED_RING, &rig.ring), (ZONED_MAGLEV, &rig.maglev)] {
        let mut cluster = server_cluster(golden, name, |_| {})?;
        cluster["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
        xds.cluster(cluster)?
            .add(ENDPOINTS, name, locality_endpoints(&rig, name, &zoned))
            .listener(outbound(golden, web, port, name)?)?;
    }
    xds.mesh_identity(MESH, &rig.leaf, &rig.mesh_ca)?;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    // Each key's origin on the zoned ring (by header) and table (by cookie).
    let zoned_origins = |proxy: &str| -> Result<Vec<String>> {
        let mut all = Vec::new();
        for (port, prefix) in [
            (ZONED_RING.0, "x-header-for-test-server: "),
            (ZONED_MAGLEV.0, "cookie: session_id="),
        ] {
            let seen = key_origins(web, port, prefix, &keys)?;
            let heavy = seen
                .iter()
                .filter(|o| **o == format!("backend:{}", ORIGINS[2]))
                .count();
            ensure!(
                (110..=190).contains(&heavy),
                "{proxy}: port {port} sent {heavy} of 200 keys to the zone of weight 3"
            );
            all.extend(seen);
        }
        Ok(all)
    };
    let light = format!("backend:{}", ORIGINS[0]);
    let split = |proxy: &str| -> Result<usize> {
        let seen = quick_beside_slow(web, BIASED.0, 30)?;
        let (_, quick) = seen.split_first().context("the slow request's origin")?;
        let to_light = quick.iter().filter(|o| **o == light).count();
        ensure!(
            quick.len() == 30 && (6..=9).contains(&to_light),
            "{proxy}: bias 0 sent {to_light} of {} quick requests to the weight-1 endpoint: {quick:?}",
            quick.len()
        );
        Ok(to_light)
    };
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = cookie_run("bearing", web, &[])?;
    split("bearing")?;
    let bearing_zoned = zoned_origins("bearing")?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP,
    // Bearing's cookies brought back to it.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [COOKIE.0, BIASED.0, ZONED_RING.0, ZONED_MAGLEV.0] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    let ours: Vec<String> = bearing.generated.iter().map(|(v, _)| v.clone()).collect();
    let envoy = cookie_run("envoy", web, &ours)?;
    let origins: Vec<String> = bearing.generated.iter().map(|(_, o)| o.clone()).collect();
    ensure!(
        envoy.replayed == origins,
        "bearing's cookies {ours:?}: bearing sent them to {origins:?}, envoy to {:?}",
        envoy.replayed
    );
    ensure!(
        envoy.users == bearing.users,
        "x-user: bearing chose {:?}, envoy {:?}",
        bearing.users,
        envoy.users
    );
    split("envoy")?;
    let envoy_zoned = zoned_origins("envoy")?;
    let differ = keys_differing(&keys, &bearing_zoned, &envoy_zoned);
    ensure!(
        differ.is_empty() && bearing_zoned.len() == 400,
        "zoned ring and table: bearing and envoy differ on {differ:?}"
    );
    Ok(())
}

/// The listener ports of round robin over weighted localities with an active health check,
/// under Envoy's default overprovisioning factor (140) and kuma-cp's (200), and their
/// clusters.
const AVAILABLE_140: (u16, &str) = (10015, "available-140");
const AVAILABLE_200: (u16, &str) = (10016, "available-200");

/// MeshLoadBalancingStrategy's locality awareness beside MeshHealthCheck: zone-1 of weight
/// 1 holds a live origin and a dead endpoint (no server), zone-2 of weight 2 a live origin,
/// round robin under locality weighting with an HTTP health check. Once the check has found
/// the dead one, zone-1's weight is scaled by its availability (half its hosts healthy
/// times the overprovisioning factor, capped at 1): with Envoy's 1.4 it takes 0.7 / 2.7 of
/// 270 requests (70), with kuma-cp's 2.0 a whole third (90); the dead endpoint gets none.
/// Envoy 1.40 fed the same resources splits them the same (within 3: its schedule starts at
/// a random pick).
#[test]
fn weighted_localities_shed_traffic_by_availability_as_envoy() -> Result<()> {
    const DEAD: u16 = 8089;
    require_root_and_tools()?;
    require_tools(&["openssl", "python3"])?;
    let topo = Topology::new(&["cp", "web", "backend"])?;
    let (cp, web, backend) = (topo.host("cp"), topo.host("web"), topo.host("backend"));
    let rig = Rig::new(&topo, "cp-lb-available")?;
    let (pki, mut xds) = (&rig.pki, rig.xds(web)?);
    let (zone1, zone2) = (
        [backend.sock4(ORIGINS[0]), backend.sock4(DEAD)],
        [backend.sock4(ORIGINS[1])],
    );
    for ((port, name), factor) in [(AVAILABLE_140, 140), (AVAILABLE_200, 200)] {
        let mut cluster = server_cluster(&rig.ring, name, lb_policy("ROUND_ROBIN"))?;
        cluster["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
        cluster["healthChecks"] = json!([{"timeout": "1s", "interval": "1s",
            "unhealthyThreshold": 1, "healthyThreshold": 1, "httpHealthCheck": {"path": "/"}}]);
        let mut assignment =
            locality_endpoints(&rig, name, &[("zone-1", 1, &zone1), ("zone-2", 2, &zone2)]);
        assignment["policy"] = json!({"overprovisioningFactor": factor});
        xds.cluster(cluster)?
            .add(ENDPOINTS, name, assignment)
            .listener(outbound(&rig.ring, web, port, name)?)?;
    }
    xds.mesh_identity(MESH, &rig.leaf, &rig.mesh_ca)?;
    let (light, dead) = (
        format!("backend:{}", ORIGINS[0]),
        format!("{}:{DEAD}", backend.ip4()),
    );
    let plain = vec![("/".to_string(), Vec::new())];
    // Per proxy: how many of 270 requests zone-1's live origin answered, per factor.
    let check = |proxy: &str| -> Result<Vec<usize>> {
        // The check has run when every request of a round is answered by a live origin.
        for port in [AVAILABLE_140.0, AVAILABLE_200.0] {
            wait_until(Duration::from_secs(20), || {
                served_by(web, port, &plain, 6).is_ok_and(|seen| {
                    seen.iter()
                        .flatten()
                        .all(|o| o.starts_with("backend:") && *o != dead)
                })
            })
            .with_context(|| format!("{proxy}: port {port} kept reaching the dead endpoint"))?;
        }
        let mut shares = Vec::new();
        for (port, expected) in [(AVAILABLE_140.0, 70), (AVAILABLE_200.0, 90)] {
            let counts = tally(&served_by(web, port, &plain, 270)?);
            let to_light = counts.get(&light).copied().unwrap_or(0);
            ensure!(
                counts.values().sum::<usize>() == 270 && to_light.abs_diff(expected) <= 3,
                "{proxy}: port {port} sent {to_light} of 270 to zone-1 (expected {expected}): \
                 {counts:?}"
            );
            shares.push(to_light);
        }
        Ok(shares)
    };
    let (_cp, access, sidecar) = pki.golden_client(TEST_CP, cp, web, &xds)?;
    let bearing = check("bearing")?;

    // Differential: Envoy 1.40 in Bearing's place, the same resources from the same CP.
    sidecar.process().stop(Duration::from_secs(5));
    let _envoy = access.envoy(web, MESH, "demo-client")?;
    for port in [AVAILABLE_140.0, AVAILABLE_200.0] {
        web.wait_for_tcp_listener(port, Duration::from_secs(20), None)?;
    }
    let envoy = check("envoy")?;
    for (ours, theirs) in bearing.iter().zip(&envoy) {
        ensure!(
            ours.abs_diff(*theirs) <= 3,
            "zone-1's share: bearing {bearing:?}, envoy {envoy:?}"
        );
    }
    Ok(())
}
