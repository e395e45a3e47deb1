//! `bearing run --cp-address` against a stand-in kuma-cp (Python's HTTPS server with a
//! certificate like kuma-cp's default one: self-signed, CA:TRUE, SAN localhost): the real binary
//! sends kuma-dp's request, retries the "Dataplane not found" answer, parses the bootstrap and
//! goes on to subscribe over ADS to the server the bootstrap names (the ADS stage itself is
//! tested against bearing-test-cp in `cp_source.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bearing_e2e::{bearing_bin, require_tools};

/// Answers the first `POST /bootstrap` with 404 and an empty body (Dataplane not created yet),
/// then with the bootstrap of `sys.argv[3]`; writes each request (path, headers, body) to
/// `sys.argv[4]`; prints its port.
const STAND_IN_CP: &str = r#"
import base64, http.server, json, ssl, sys
cert, key, bootstrap, log = sys.argv[1:5]
answer = json.dumps({
    "bootstrap": base64.b64encode(open(bootstrap, "rb").read()).decode(),
    "kumaSidecarConfiguration": {"networking": {"address": "10.0.0.1"}, "metrics": {"aggregate": []}},
}).encode()
seen = []
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        seen.append({"path": self.path, "accept": self.headers.get("accept"),
                     "contentType": self.headers.get("content-type"), "body": json.loads(body)})
        open(log, "w").write(json.dumps(seen))
        if len(seen) == 1:
            self.send_response(404); self.send_header("content-length", "0"); self.end_headers()
        else:
            self.send_response(200); self.send_header("content-length", str(len(answer))); self.end_headers()
            self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn bootstrap_with_a_stand_in_kuma_cp() -> Result<()> {
    require_tools(&["python3", "openssl"])?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cp.pem"), dir.path().join("cp.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args([
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        ])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .context("openssl req")?;
    ensure!(status.success(), "openssl req failed");
    let bootstrap = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/kuma-corpus/bootstrap/generator.default-config.golden.yaml");
    let log = dir.path().join("requests.json");
    let mut cp = Command::new("python3")
        .arg("-c")
        .arg(STAND_IN_CP)
        .args([&cert, &key, &bootstrap, &log])
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let result = (|| -> Result<()> {
        let mut port = String::new();
        let stdout = cp.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut port)?;
        let port: u16 = port.trim().parse().context("the stand-in CP's port")?;
        let token = dir.path().join("token");
        std::fs::write(&token, "the-token\n")?;
        let dataplane = dir.path().join("dp.yaml");
        std::fs::write(
            &dataplane,
            "type: Dataplane\nmesh: default\nname: {{ name }}\nnetworking:\n  address: {{ address }}\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: web\n",
        )?;
        let cp_address = format!("https://localhost:{port}");
        let bin = bearing_bin()?;
        let start = Instant::now();
        let log_path = dir.path().join("bearing.log");
        let mut bearing = Command::new(bin)
            .args(["run", "--cp-address", &cp_address, "--ca-cert-file"])
            .arg(&cert)
            .arg("--dataplane-token-file")
            .arg(&token)
            .arg("-d")
            .arg(&dataplane)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .args([
                "-v",
                "name=web-1,address=10.0.0.1",
                "--binary-path",
                "/usr/bin/envoy",
                "--admin-address",
                "127.0.0.1:0",
            ])
            .env_remove("BEARING_CONFIG_DIR")
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let subscribed = "subscribing to the control plane over ADS";
        let mut stderr = String::new();
        while start.elapsed() < Duration::from_secs(30) && !stderr.contains(subscribed) {
            std::thread::sleep(Duration::from_millis(100));
            stderr = std::fs::read_to_string(&log_path)?;
        }
        let still_running = bearing.try_wait()?.is_none();
        let _ = bearing.kill();
        let _ = bearing.wait();
        let stderr = std::fs::read_to_string(&log_path)?;
        ensure!(
            still_running && stderr.contains(subscribed),
            "after the bootstrap, the proxy subscribes over ADS and keeps running: {stderr}"
        );
        ensure!(
            stderr.contains("ads=https://localhost:5678"),
            "the ADS server of the bootstrap, over TLS: {stderr}"
        );
        ensure!(
            stderr.contains("Dataplane entity not found"),
            "the 404 is logged as a retry: {stderr}"
        );
        ensure!(stderr.contains(&cp_address), "{stderr}");
        ensure!(stderr.contains("node=mesh.name.namespace"), "{stderr}");
        ensure!(stderr.contains("ads=localhost:5678"), "{stderr}");
        ensure!(
            stderr.contains("flag=\"--binary-path\""),
            "no-effect flag logged: {stderr}"
        );
        ensure!(
            start.elapsed() >= Duration::from_secs(3),
            "kuma-dp's 3 s between attempts"
        );

        let seen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&log)?)?;
        let requests = seen.as_array().context("requests")?;
        ensure!(requests.len() == 2, "{seen}");
        let first = &requests[0];
        ensure!(first["path"] == "/bootstrap", "{first}");
        ensure!(
            first["accept"] == "application/json" && first["contentType"] == "application/json",
            "{first}"
        );
        let body = &first["body"];
        ensure!(
            body["name"] == "web-1" && body["mesh"] == "default",
            "{body}"
        );
        ensure!(body["dataplaneToken"] == "the-token", "{body}");
        ensure!(
            body["caCert"]
                .as_str()
                .is_some_and(|c| c.contains("BEGIN CERTIFICATE")),
            "{body}"
        );
        let resource: serde_json::Value = serde_json::from_str(
            body["dataplaneResource"]
                .as_str()
                .context("dataplaneResource")?,
        )?;
        ensure!(
            resource["networking"]["address"] == "10.0.0.1",
            "{resource}"
        );
        Ok(())
    })();
    let _ = cp.kill();
    let _ = cp.wait();
    result
}
