//! Smoke tests of the e2e harness itself (no bearing involved).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::*;

fn netns_list() -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn our_namespaces(topo_id: &str) -> Result<Vec<String>> {
    let prefix = format!("{NETNS_PREFIX}{topo_id}-");
    Ok(netns_list()?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

#[test]
fn nginx_reachable_from_other_host() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    ensure!(a.ip4() != b.ip4() && a.ip6() != b.ip6());
    ensure!(our_namespaces(topo.id())?.len() == 3, "bridge + 2 hosts");

    let nginx = start_nginx(b, 8080)?;

    let (code, body) = curl(a, [nginx.url4("/")])?;
    ensure!(code == 200, "status {code}");
    ensure!(body == nginx.body(), "body {body:?}");

    let (code, body) = curl(a, [nginx.url6("/")])?;
    ensure!(code == 200 && body == nginx.body(), "ipv6: {code} {body:?}");

    let (code, _) = curl(a, [nginx.url4("/does-not-exist")])?;
    ensure!(code == 404, "status {code}");

    let (code, headers) = curl(a, ["-i", &nginx.url4("/health")])?;
    ensure!(code == 200, "status {code}");
    ensure!(
        headers.to_ascii_lowercase().contains("x-served-by: b:8080"),
        "{headers}"
    );

    ensure!(a.can_connect(b.sock4(8080)) && a.can_connect(b.sock6(8080)));
    ensure!(!a.can_connect(b.sock4(8081)));
    ensure!(b.tcp_listening(8080)? && !a.tcp_listening(8080)?);

    // Per-namespace /etc overrides apply to later commands on that host.
    a.set_etc_file("hosts", &format!("{} backend\n", b.ip4()))?;
    let (code, body) = curl(a, ["http://backend:8080/"])?;
    ensure!(code == 200 && body == nginx.body(), "{code} {body:?}");

    // Nothing listens on a: connection refused is reported, not an Err.
    let refused = curl_output(b, [http_url(a.ip4(), 8080, "/")])?;
    ensure!(refused.exit_code == Some(7), "{refused:?}");
    ensure!(curl(b, [http_url(a.ip4(), 8080, "/")]).is_err());
    Ok(())
}

#[test]
fn redis_ping_from_other_host() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let redis = start_redis(b, 6379)?;

    ensure!(redis_cli(a, b.ip4(), redis.port(), ["PING"])? == "PONG");
    ensure!(redis_cli(a, b.ip6(), redis.port(), ["SET", "k", "v"])? == "OK");

    let out = a
        .run(
            "redis-cli",
            ["-h", &b.ip4().to_string(), "-p", "6379", "GET", "k"],
        )?
        .check()?;
    ensure!(out.stdout.trim() == "v", "{out:?}");
    Ok(())
}

#[test]
fn python_server_delay_echo_status() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["client", "server"])?;
    let (c, s) = (topo.host("client"), topo.host("server"));
    let slow = start_slow_server(s, 9000, Duration::from_millis(1500))?;
    let fast = start_http_server(s, 9001)?;

    let started = Instant::now();
    let (code, body) = curl(c, [slow.url4("/")])?;
    ensure!(code == 200 && body == slow.body(), "{code} {body:?}");
    ensure!(started.elapsed() >= Duration::from_millis(1400));

    let timed_out = curl_output(c, ["-m", "0.5", &slow.url4("/")])?;
    ensure!(timed_out.exit_code == Some(28), "{timed_out:?}");

    let (code, echo) = curl(
        c,
        [
            "-H",
            "X-Test: 42",
            "--data-binary",
            "payload",
            &fast.url6("/echo/x?y=1"),
        ],
    )?;
    ensure!(code == 200, "status {code}");
    ensure!(echo.starts_with("POST /echo/x?y=1 HTTP/1.1\n"), "{echo}");
    ensure!(echo.contains("\nx-test: 42\n"), "{echo}");
    ensure!(echo.ends_with("\n\npayload"), "{echo}");

    let (code, _) = curl(c, [fast.url4("/status/503")])?;
    ensure!(code == 503);
    let (code, body) = curl(c, [fast.url4("/bytes/100000")])?;
    ensure!(code == 200 && body.len() == 100_000);

    let started = Instant::now();
    let (code, _) = curl(c, [fast.url4("/?delay=0.3")])?;
    ensure!(code == 200 && started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[test]
fn processes_uids_signals_and_logs() -> Result<()> {
    require_root_and_tools()?;
    let topo = Topology::new(&["a"])?;
    let a = topo.host("a");

    let out = a.command("id").arg("-u").uid(5678).output()?.check()?;
    ensure!(out.stdout.trim() == "5678", "{out:?}");
    let out = a.run("id", ["-G"])?.check()?;
    ensure!(out.stdout.trim() == "0", "{out:?}");

    let out = a.sh("ip -o addr show dev eth0; ip route; ip -6 route")?;
    ensure!(out.stdout.contains(&a.ip4().to_string()), "{}", out.stdout);
    ensure!(out.stdout.contains(&a.ip6().to_string()), "{}", out.stdout);
    ensure!(
        out.stdout
            .contains(&format!("default via {}", topo.gateway4())),
        "{}",
        out.stdout
    );

    // The topology dir is readable by other uids.
    let file = topo.dir().join("for-uid-5678.txt");
    std::fs::write(&file, "readable")?;
    let out = a.command("cat").arg(&file).uid(5678).output()?.check()?;
    ensure!(out.stdout == "readable");

    let out = a.command("cat").stdin("from stdin").output()?.check()?;
    ensure!(out.stdout == "from stdin");

    let err = a
        .command("sleep")
        .arg("5")
        .timeout(Duration::from_millis(200))
        .output()
        .expect_err("must time out");
    ensure!(format!("{err:#}").contains("timed out"), "{err:#}");

    // A shell that logs, and reacts to SIGUSR1 by logging and exiting 3.
    let p = a
        .command("bash")
        .args([
            "-c",
            "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
        ])
        .log_name("trapper")
        .spawn()?;
    p.wait_for_log("ready", Duration::from_secs(5))?;
    ensure!(p.is_running());
    ensure!(p.log_path().starts_with(topo.logs_dir()));
    p.signal(Signal::Usr1)?;
    let status = p
        .wait_exit(Duration::from_secs(5))
        .context("trapper did not exit")?;
    ensure!(status.code() == Some(3), "{status}");
    ensure!(p.log_contents().contains("got-usr1"));
    ensure!(
        p.signal(Signal::Term).is_err(),
        "signal after exit must fail"
    );

    // stop() escalates to SIGKILL for processes ignoring SIGTERM.
    let stubborn = a.spawn(
        "bash",
        ["-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"],
    )?;
    stubborn.wait_for_log("up", Duration::from_secs(5))?;
    let started = Instant::now();
    let status = stubborn
        .stop(Duration::from_millis(300))
        .context("not reaped")?;
    ensure!(!status.success());
    ensure!(started.elapsed() < Duration::from_secs(3));

    // wait helpers
    let t0 = Instant::now();
    wait_until(Duration::from_secs(2), || {
        t0.elapsed() > Duration::from_millis(100)
    })?;
    ensure!(wait_until(Duration::from_millis(100), || false).is_err());
    let mut n = 0;
    let v = wait_until_ok(Duration::from_secs(2), || {
        n += 1;
        anyhow::ensure!(n >= 3, "not yet");
        Ok(n)
    })?;
    ensure!(v == 3);
    Ok(())
}

#[test]
fn drop_cleans_up_namespaces_and_processes() -> Result<()> {
    require_root_and_tools()?;
    let (id, dir, pid) = {
        let topo = Topology::builder().host("x").host("y").build()?;
        let p = topo
            .host("x")
            .spawn("bash", ["-c", "sleep 300 & sleep 300 & wait"])?;
        start_http_server(topo.host("y"), 8000)?;
        ensure!(our_namespaces(topo.id())?.len() == 3);
        (topo.id().to_string(), topo.dir().to_path_buf(), p.pid())
    };
    ensure!(
        our_namespaces(&id)?.is_empty(),
        "namespaces left: {:?}",
        our_namespaces(&id)?
    );
    ensure!(!dir.exists(), "{} left behind", dir.display());
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still exists"
    );
    Ok(())
}

#[test]
fn panicking_test_still_cleans_up() -> Result<()> {
    require_root_and_tools()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let topo = Topology::new(&["p"]).expect("topology");
        let p = topo
            .host("p")
            .spawn("bash", ["-c", "echo marker-in-log; sleep 300"])
            .expect("spawn");
        p.wait_for_log("marker-in-log", Duration::from_secs(5))
            .expect("log");
        tx.send((topo.id().to_string(), topo.dir().to_path_buf(), p.pid()))
            .expect("send");
        panic!("deliberate panic to exercise cleanup");
    })
    .join();
    ensure!(result.is_err(), "thread should have panicked");
    let (id, dir, pid) = rx.recv()?;
    ensure!(our_namespaces(&id)?.is_empty());
    ensure!(!dir.exists());
    ensure!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    Ok(())
}

/// A CA from the openssl helper, an HTTPS nginx with a leaf of it, curl trusting (or not)
/// that CA, and `openssl s_client` against a TLS 1.3 server that requires client
/// certificates of that CA (`openssl s_server -Verify`): the rejections arrive as alerts
/// after the client's handshake completed, and the helper must still call them rejections.
#[test]
fn tls_ca_nginx_and_s_client() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl"])?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let pki = topo.dir().join("pki");
    let ca = TestCa::new(&pki, "test-ca")?;
    let other = TestCa::new(&pki, "other-ca")?;
    let server = ca.issue("server", &["DNS:external.test"])?;
    let nginx = NginxConfig::new(8443)
        .body("over https\n")
        .tls(server.cert_pem()?, server.key_pem()?)
        .start(b)?;
    ensure!(
        nginx.url4("/").starts_with("https://"),
        "{}",
        nginx.url4("/")
    );

    let resolve = format!("external.test:8443:{}", b.ip4());
    let cacert = ca.files().cert.display().to_string();
    let url = "https://external.test:8443/";
    let (code, body) = curl(a, ["--cacert", &cacert, "--resolve", &resolve, url])?;
    ensure!(code == 200 && body == "over https\n", "{code} {body:?}");
    let untrusted = curl_output(a, ["--resolve", &resolve, url])?;
    ensure!(
        untrusted.exit_code == Some(60),
        "curl without the CA: {untrusted:?}"
    );

    let s_server = b
        .command("openssl")
        .args(["s_server", "-accept", "9443", "-www", "-Verify", "1"])
        .args(["-verify_return_error", "-alpn", "kuma", "-CAfile"])
        .arg(&ca.files().cert)
        .arg("-cert")
        .arg(&server.cert)
        .arg("-key")
        .arg(&server.key)
        .log_name("s_server")
        .spawn()?;
    b.wait_for_tcp_listener(9443, PEER_STARTUP_TIMEOUT, Some(&s_server))?;
    let to = TlsClient::new(b.sock4(9443)).alpn("kuma");

    let no_cert = to.clone().run(a)?;
    ensure!(
        no_cert.handshake && !no_cert.accepted() && no_cert.alert.is_some(),
        "no client cert: {no_cert:?}"
    );
    let foreign = other.issue("client", &["URI:spiffe://default/web"])?;
    let wrong_ca = to.clone().client_cert(&foreign).run(a)?;
    ensure!(
        !wrong_ca.accepted() && wrong_ca.alert.as_deref() == Some("tlsv1 alert unknown ca"),
        "client cert of another CA: {wrong_ca:?}"
    );
    let client = ca.issue("client", &["URI:spiffe://default/web"])?;
    let good = to
        .clone()
        .client_cert(&client)
        .verify_ca(&ca.files().cert)
        .run(a)?;
    ensure!(
        good.accepted() && good.verified && good.response.starts_with("HTTP/1.0 200"),
        "valid client cert: {good:?}"
    );
    ensure!(good.protocol.as_deref() == Some("TLSv1.3"), "{good:?}");
    // Verifying the server against the wrong CA fails the handshake itself.
    let unverified = to
        .client_cert(&client)
        .verify_ca(&other.files().cert)
        .run(a)?;
    ensure!(
        !unverified.handshake && !unverified.accepted(),
        "{unverified:?}"
    );
    // Nothing listening: no handshake, no alert.
    let refused = TlsClient::new(b.sock4(9444)).run(a)?;
    ensure!(!refused.handshake && refused.alert.is_none(), "{refused:?}");
    Ok(())
}

/// tcpdump on the server's host records a plaintext body, but not the same body served
/// over TLS (whose SNI is visible in the ClientHello).
#[test]
fn capture_sees_plaintext_and_not_inside_tls() -> Result<()> {
    require_root_and_tools()?;
    require_tools(&["openssl", "tcpdump"])?;
    let topo = Topology::new(&["a", "b"])?;
    let (a, b) = (topo.host("a"), topo.host("b"));
    let marker = "capture-marker-7f3a9c";
    let plain = NginxConfig::new(80).body(marker).start(b)?;
    let ca = TestCa::new(&topo.dir().join("pki"), "test-ca")?;
    let cert = ca.issue("server", &["DNS:external.test"])?;
    NginxConfig::new(443)
        .body(marker)
        .tls(cert.cert_pem()?, cert.key_pem()?)
        .start(b)?;

    let capture = Capture::start(b, "tcp port 80")?;
    let (code, body) = curl(a, [plain.url4("/")])?;
    ensure!(code == 200 && body == marker, "{code} {body:?}");
    let pcap = capture.stop(a)?;
    ensure!(pcap.contains(marker), "plaintext body not captured");
    ensure!(pcap.packets() >= 6, "{} packets", pcap.packets());

    let capture = Capture::start(b, "tcp port 443")?;
    let resolve = format!("external.test:443:{}", b.ip4());
    let cacert = ca.files().cert.display().to_string();
    let (code, body) = curl(
        a,
        [
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "https://external.test/",
        ],
    )?;
    ensure!(code == 200 && body == marker, "{code} {body:?}");
    let pcap = capture.stop(a)?;
    ensure!(pcap.contains("external.test"), "no SNI in the capture");
    ensure!(
        !pcap.contains(marker),
        "the TLS body is readable on the wire"
    );
    ensure!(pcap.packets() >= 6, "{} packets", pcap.packets());
    Ok(())
}
