//! The measurements shared by every TLS stack of the comparison (issue 22, "The TLS stack is
//! yours to choose, by measurement").
//!
//! A stack binary implements [`Stack`] (server and client configs, accept, connect, what the
//! server saw) and hands its command line to [`main`]. Everything else is here, the same for
//! every stack: the mesh PKI (one CA, ECDSA P-256 leaves with SPIFFE URI SANs, made with rcgen
//! as Bearing's `tls/src/identity.rs` makes them), the checks that the mTLS really is mTLS, and
//! the three measurements. Each prints one line of `key=value` pairs for the runner.
//!
//! Server and client run in one process on loopback, each on its own tokio runtime of one
//! worker thread (the CPU time of each side is that thread's, from `getrusage(RUSAGE_THREAD)`),
//! except for the memory measurement, whose server is a child process so that its RSS is the
//! server's alone.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// The ALPN protocol of Kuma mesh traffic.
pub const KUMA_ALPN: &[u8] = b"kuma";
/// The SPIFFE id of the server (the destination a client verifies exactly).
pub const SERVER_ID: &str = "spiffe://default/backend";
/// The SPIFFE id of the client, which the server reads from the verified certificate.
pub const CLIENT_ID: &str = "spiffe://default/web";
/// The SNI Kuma's Envoy sends for a `kuma.io/service` outbound (the tags form). rustls cannot
/// send it (rustls-pki-types accepts DNS names only).
pub const KUMA_TAGS_SNI: &str = "backend{mesh=default}";
/// Kuma's hashed MeshService SNI form (`a<hash>.<name>.<port>.<mesh>.ms`), a DNS name, which
/// rustls can send: the rustls client sends this one so that every stack sends an SNI.
pub const KUMA_HASHED_SNI: &str = "a6b1e4bd4d2f6c1a9.backend.8080.default.ms";
/// Size of the request and of the response of one exchange.
pub const EXCHANGE_BYTES: usize = 64;

/// A leaf or CA certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    /// The certificate, PEM.
    pub cert: String,
    /// The PKCS#8 private key, PEM.
    pub key: String,
}

/// Everything the checks and measurements need: the mesh CA, the two mesh identities, and the
/// two that must be refused.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The mesh CA certificate (its key signs every leaf below but `rogue_client`).
    pub ca_cert: String,
    /// `spiffe://default/backend`, the server.
    pub server: Pem,
    /// `spiffe://default/web`, the client.
    pub client: Pem,
    /// `spiffe://default/web` from another CA: a server must refuse it.
    pub rogue_client: Pem,
    /// `spiffe://default/other` from the mesh CA: a client expecting the backend must refuse it.
    pub impostor_server: Pem,
}

impl Pki {
    /// A fresh mesh CA (shaped as Bearing's `MeshCa::generate`) and the leaves.
    pub fn generate() -> Pki {
        let (ca_cert, mesh_ca) = ca("default");
        let (_, other_ca) = ca("other");
        Pki {
            ca_cert,
            server: leaf(&mesh_ca, "backend"),
            client: leaf(&mesh_ca, "web"),
            rogue_client: leaf(&other_ca, "web"),
            impostor_server: leaf(&mesh_ca, "other"),
        }
    }

    /// One line (PEM holds no `|`), for the environment of the memory server.
    fn encode(&self) -> String {
        let p = [
            &self.server,
            &self.client,
            &self.rogue_client,
            &self.impostor_server,
        ];
        let mut parts = vec![self.ca_cert.as_str()];
        for pem in p {
            parts.push(&pem.cert);
            parts.push(&pem.key);
        }
        parts.join("|")
    }

    fn decode(text: &str) -> Option<Pki> {
        let parts: Vec<&str> = text.split('|').collect();
        let pem = |i: usize| -> Option<Pem> {
            Some(Pem {
                cert: parts.get(i)?.to_string(),
                key: parts.get(i + 1)?.to_string(),
            })
        };
        Some(Pki {
            ca_cert: parts.first()?.to_string(),
            server: pem(1)?,
            client: pem(3)?,
            rogue_client: pem(5)?,
            impostor_server: pem(7)?,
        })
    }
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating an ECDSA P-256 key")
}

/// A Kuma-shaped builtin mesh CA: `O=Kuma, OU=Mesh, CN=<mesh>`, URI SAN `spiffe://<mesh>`.
fn ca(mesh: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = p256();
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "Kuma");
    subject.push(DnType::OrganizationalUnitName, "Mesh");
    subject.push(DnType::CommonName, mesh);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri(&format!("spiffe://{mesh}"))];
    let cert = params.self_signed(&key).expect("self-signing the CA");
    (cert.pem(), Issuer::new(params, key))
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("a SPIFFE id is an IA5 string"))
}

/// A data-plane leaf as Bearing's `issue_leaf` makes it: URI SAN `spiffe://default/<service>`,
/// CN = service, digitalSignature + keyEncipherment, serverAuth + clientAuth.
fn leaf(ca: &Issuer<'static, KeyPair>, service: &str) -> Pem {
    let key = p256();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(&format!("spiffe://default/{service}"))];
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, service);
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca).expect("signing a leaf");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// What the server side of one connection negotiated and saw, for the checks.
#[derive(Debug)]
pub struct Negotiated {
    /// Protocol version, as the stack names it.
    pub version: String,
    /// Cipher suite, as the stack names it.
    pub cipher: String,
    /// The ALPN protocol selected.
    pub alpn: Option<Vec<u8>>,
    /// The SNI the client sent.
    pub sni: Option<String>,
}

/// One TLS stack: mesh mTLS configs and the async accept and connect of its tokio adapter.
///
/// Both configs: TLS 1.3 only, ALPN `kuma`, key exchange X25519 only (so every stack does the
/// same key exchange; all three default to it first), no session resumption (no tickets from
/// the server, no session cache on either side), the leaf and the CA sent as the chain (Kuma's
/// `[leaf, CA]`). Server: a client certificate chaining to the mesh CA is required. Client:
/// the server's chain must lead to the mesh CA and its URI SAN must equal the expected id.
pub trait Stack: Sized + 'static {
    /// The name in the table.
    const NAME: &'static str;
    /// The SNI this stack's client sends.
    const SNI: &'static str;
    /// The server config, shared by every accepted connection.
    type Acceptor: Send + Sync + 'static;
    /// The client config, shared by every connection.
    type Connector: Send + Sync + 'static;
    /// An established server-side TLS stream.
    type ServerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// An established client-side TLS stream.
    type ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The TLS library and its version, as it reports itself.
    fn library() -> String;
    /// The server config presenting `leaf`.
    fn acceptor(pki: &Pki, leaf: &Pem) -> io::Result<Self::Acceptor>;
    /// The client config presenting `leaf` (none: no client certificate) and accepting only a
    /// server whose URI SAN is `expected`.
    fn connector(pki: &Pki, leaf: Option<&Pem>, expected: &str) -> io::Result<Self::Connector>;
    /// The server handshake on an accepted TCP connection.
    fn accept(
        acceptor: &Self::Acceptor,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<Self::ServerStream>> + Send;
    /// The client handshake, sending [`Stack::SNI`].
    fn connect(
        connector: &Self::Connector,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<Self::ClientStream>> + Send;
    /// The URI SANs of the client's verified certificate (what a sidecar reads per connection
    /// to authorize the peer).
    fn peer_uris(stream: &Self::ServerStream) -> Vec<String>;
    /// What the server side negotiated.
    fn negotiated(stream: &Self::ServerStream) -> Negotiated;
    /// The ALPN protocol the client side got.
    fn client_alpn(stream: &Self::ClientStream) -> Option<Vec<u8>>;
}

/// An `io::Error` for a failed check or a stack error.
pub fn error(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(what.to_string())
}

/// A tokio runtime of one worker thread.
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// CPU time (user + system) of the calling thread, in microseconds.
fn thread_cpu_us() -> u64 {
    rusage_us(libc::RUSAGE_THREAD)
}

fn rusage_us(who: libc::c_int) -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    unsafe { libc::getrusage(who, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// The CPU time of the worker thread of a one-worker runtime (a task runs there).
fn worker_cpu_us(rt: &Runtime) -> u64 {
    rt.block_on(rt.spawn(async { thread_cpu_us() }))
        .expect("reading the worker thread's CPU time")
}

/// Raises the open-file limit to the hard limit (10k connections need 10k descriptors).
fn raise_nofile() {
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill, then read by setrlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// The resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The 1-minute load average, to print beside each measurement.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

async fn tcp_connect(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A server handshake, the peer's identity read and checked as a sidecar reads it, then one
/// byte written so that the client knows the server completed the handshake (in TLS 1.3 the
/// client finishes first; the server verifies the client's certificate after that).
async fn accept_and_ack<S: Stack>(
    acceptor: &S::Acceptor,
    tcp: TcpStream,
) -> io::Result<S::ServerStream> {
    tcp.set_nodelay(true)?;
    let mut tls = S::accept(acceptor, tcp).await?;
    if !S::peer_uris(&tls).iter().any(|uri| uri == CLIENT_ID) {
        return Err(error("client certificate without the expected SPIFFE id"));
    }
    tls.write_all(b"k").await?;
    Ok(tls)
}

/// The client side of [`accept_and_ack`]: connect, handshake, wait for the server's byte.
async fn connect_and_wait<S: Stack>(
    connector: &S::Connector,
    addr: std::net::SocketAddr,
) -> io::Result<S::ClientStream> {
    let tcp = tcp_connect(addr).await?;
    let mut tls = S::connect(connector, tcp).await?;
    let mut ack = [0u8; 1];
    tls.read_exact(&mut ack).await?;
    Ok(tls)
}

/// Reads until the peer closes (or fails), holding the connection meanwhile.
async fn drain(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 16];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A listener on a loopback port, serving [`accept_and_ack`] then [`drain`] for every connection
/// (for the handshake measurement and the checks), counting failed handshakes.
fn serve_handshakes<S: Stack>(
    rt: &Runtime,
    acceptor: Arc<S::Acceptor>,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("the listener's address");
    let failed = Arc::new(AtomicU64::new(0));
    let failures = failed.clone();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                match accept_and_ack::<S>(&acceptor, tcp).await {
                    Ok(tls) => drain(tls).await,
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (addr, failed)
}

/// Whether a handshake with `connector` against `acceptor` gets through both sides.
fn try_pair<S: Stack>(acceptor: S::Acceptor, connector: &S::Connector) -> (io::Result<()>, u64) {
    let server_rt = runtime("check-server");
    let (addr, failed) = serve_handshakes::<S>(&server_rt, Arc::new(acceptor));
    let client_rt = runtime("check-client");
    let outcome = client_rt.block_on(async {
        let mut tls = tokio::time::timeout(
            Duration::from_secs(5),
            connect_and_wait::<S>(connector, addr),
        )
        .await
        .map_err(|_| error("timed out"))??;
        if S::client_alpn(&tls).as_deref() != Some(KUMA_ALPN) {
            return Err(error("the client did not get ALPN kuma"));
        }
        tls.shutdown().await.ok();
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(50));
    (outcome, failed.load(Ordering::Relaxed))
}

/// Checks that the configs are the mesh mTLS they claim: a good pair negotiates TLS 1.3, ALPN
/// `kuma` and the stack's SNI, and the server reads the client's SPIFFE id; a client with no
/// certificate or one from another CA is refused; a client expecting the backend refuses a
/// server of the same mesh with another identity. Returns what the good pair negotiated.
pub fn check<S: Stack>(pki: &Pki) -> io::Result<String> {
    let server_rt = runtime("check-server");
    let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let acceptor = S::acceptor(pki, &pki.server)?;
    let seen = server_rt.spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = S::accept(&acceptor, tcp).await?;
        let negotiated = S::negotiated(&tls);
        let uris = S::peer_uris(&tls);
        tls.write_all(b"k").await?;
        drain(&mut tls).await;
        Ok::<_, io::Error>((negotiated, uris))
    });
    let client_rt = runtime("check-client");
    let connector = S::connector(pki, Some(&pki.client), SERVER_ID)?;
    let client_alpn = client_rt.block_on(async {
        let mut tls = connect_and_wait::<S>(&connector, addr).await?;
        let alpn = S::client_alpn(&tls);
        tls.shutdown().await.ok();
        Ok::<_, io::Error>(alpn)
    })?;
    let (negotiated, uris) = server_rt.block_on(seen).map_err(error)??;
    let expect = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(error(format!(
                "{}: {what}: {negotiated:?} {uris:?}",
                S::NAME
            )))
        }
    };
    expect(
        client_alpn.as_deref() == Some(KUMA_ALPN),
        "client ALPN is not kuma",
    )?;
    expect(
        negotiated.alpn.as_deref() == Some(KUMA_ALPN),
        "server ALPN is not kuma",
    )?;
    expect(
        negotiated.version.contains("1.3") || negotiated.version.contains("1_3"),
        "not TLS 1.3",
    )?;
    expect(
        negotiated.sni.as_deref() == Some(S::SNI),
        "the server did not see the SNI sent",
    )?;
    expect(
        uris == [CLIENT_ID],
        "the server did not read the client's SPIFFE id",
    )?;

    let refused = |what: &str, (outcome, failed): (io::Result<()>, u64)| {
        if outcome.is_ok() || failed == 0 {
            return Err(error(format!(
                "{}: {what} was not refused (client: {outcome:?}, server failures: {failed})",
                S::NAME
            )));
        }
        Ok(())
    };
    refused(
        "a client without a certificate",
        try_pair::<S>(
            S::acceptor(pki, &pki.server)?,
            &S::connector(pki, None, SERVER_ID)?,
        ),
    )?;
    refused(
        "a client certificate from another CA",
        try_pair::<S>(
            S::acceptor(pki, &pki.server)?,
            &S::connector(pki, Some(&pki.rogue_client), SERVER_ID)?,
        ),
    )?;
    refused(
        "a server of the mesh with another SPIFFE id",
        try_pair::<S>(
            S::acceptor(pki, &pki.impostor_server)?,
            &S::connector(pki, Some(&pki.client), SERVER_ID)?,
        ),
    )?;
    Ok(format!(
        "library={:?} version={} cipher={} alpn=kuma sni={:?} client_id={}",
        S::library(),
        negotiated.version,
        negotiated.cipher,
        S::SNI,
        CLIENT_ID
    ))
}

/// Sorted-sample percentile.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `clients` tasks on the client runtime, each looping a new TCP connection, a full mTLS
/// handshake, the server's byte, close, for `seconds`.
async fn handshake_loop<S: Stack>(
    connector: Arc<S::Connector>,
    addr: std::net::SocketAddr,
    clients: usize,
    seconds: f64,
) -> (Vec<u32>, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                match connect_and_wait::<S>(&connector, addr).await {
                    Ok(tls) => {
                        latencies.push(start.elapsed().as_micros() as u32);
                        drop(tls);
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("a handshake task");
        all.extend(latencies);
        errors += e;
    }
    (all, errors)
}

/// Full mTLS handshakes per second: `clients` concurrent clients on one thread, a server on
/// another, a new connection each time.
pub fn handshakes<S: Stack>(pki: &Pki, seconds: f64, clients: usize) -> io::Result<String> {
    let server_rt = runtime("hs-server");
    let client_rt = runtime("hs-client");
    let (addr, failed) =
        serve_handshakes::<S>(&server_rt, Arc::new(S::acceptor(pki, &pki.server)?));
    let connector = Arc::new(S::connector(pki, Some(&pki.client), SERVER_ID)?);
    // Warm-up (page faults, allocator, caches), not counted.
    client_rt.block_on(handshake_loop::<S>(connector.clone(), addr, clients, 0.5));
    let load = loadavg();
    let (server_cpu, client_cpu) = (worker_cpu_us(&server_rt), worker_cpu_us(&client_rt));
    let start = Instant::now();
    let (mut latencies, errors) =
        client_rt.block_on(handshake_loop::<S>(connector, addr, clients, seconds));
    let wall = start.elapsed().as_secs_f64();
    let (server_cpu, client_cpu) = (
        worker_cpu_us(&server_rt) - server_cpu,
        worker_cpu_us(&client_rt) - client_cpu,
    );
    latencies.sort_unstable();
    let n = latencies.len().max(1) as f64;
    Ok(format!(
        "handshakes={} rate={:.0} p50_us={} p99_us={} errors={} server_failures={} server_cpu_us={:.1} client_cpu_us={:.1} load={load}",
        latencies.len(),
        latencies.len() as f64 / wall,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        errors,
        failed.load(Ordering::Relaxed),
        server_cpu as f64 / n,
        client_cpu as f64 / n,
    ))
}

/// Small request/response exchanges per second over `conns` established mTLS connections:
/// each client writes 64 bytes and waits for the server's 64 bytes, in a loop.
pub fn exchanges<S: Stack>(pki: &Pki, seconds: f64, conns: usize) -> io::Result<String> {
    let server_rt = runtime("ex-server");
    let client_rt = runtime("ex-client");
    let acceptor = Arc::new(S::acceptor(pki, &pki.server)?);
    let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    server_rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = accept_and_ack::<S>(&acceptor, tcp).await else {
                    return;
                };
                let mut buf = [0u8; EXCHANGE_BYTES];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let connector = S::connector(pki, Some(&pki.client), SERVER_ID)?;
    let streams = client_rt.block_on(async {
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            streams.push(connect_and_wait::<S>(&connector, addr).await?);
        }
        Ok::<_, io::Error>(streams)
    })?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut tls in streams {
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(client_rt.spawn(async move {
            let request = [b'q'; EXCHANGE_BYTES];
            let mut response = [0u8; EXCHANGE_BYTES];
            while !stop.load(Ordering::Relaxed) {
                tls.write_all(&request).await?;
                tls.read_exact(&mut response).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(())
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let load = loadavg();
    let (count0, server0, client0, start) = (
        done.load(Ordering::Relaxed),
        worker_cpu_us(&server_rt),
        worker_cpu_us(&client_rt),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (count, server_cpu, client_cpu, wall) = (
        done.load(Ordering::Relaxed) - count0,
        worker_cpu_us(&server_rt) - server0,
        worker_cpu_us(&client_rt) - client0,
        start.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        client_rt.block_on(task).map_err(error)??;
    }
    let n = count.max(1) as f64;
    Ok(format!(
        "exchanges={count} rate={:.0} server_cpu_us={:.2} client_cpu_us={:.2} load={load}",
        count as f64 / wall,
        server_cpu as f64 / n,
        client_cpu as f64 / n,
    ))
}

const PKI_ENV: &str = "TLS_STACKS_PKI";

/// The server of the memory measurement, in its own process: prints `ready <port>`, then
/// accepts mTLS connections and holds each one (a task waiting to read) until the peer closes.
fn memory_server<S: Stack>() -> io::Result<()> {
    let pki = std::env::var(PKI_ENV)
        .ok()
        .and_then(|text| Pki::decode(&text))
        .ok_or_else(|| error(format!("{PKI_ENV} is missing or malformed")))?;
    let rt = runtime("mem-server");
    let acceptor = Arc::new(S::acceptor(&pki, &pki.server)?);
    let listener = rt.block_on(async { TcpListener::bind("127.0.0.1:0").await })?;
    println!("ready {}", listener.local_addr()?.port());
    rt.block_on(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = accept_and_ack::<S>(&acceptor, tcp).await {
                    drain(tls).await;
                }
            });
        }
    });
    Ok(())
}

/// RSS of a server process (the stack's configs on a one-worker runtime) idle, and holding
/// `conns` established mTLS connections; the client side is this process.
pub fn memory<S: Stack>(pki: &Pki, conns: usize) -> io::Result<String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("memory-server")
        .env(PKI_ENV, pki.encode())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or_else(|| error("no stdout"))?)
        .read_line(&mut line)?;
    let port: u16 = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| error(format!("memory server said {line:?}")))?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid);
    let client_rt = runtime("mem-client");
    let connector = Arc::new(S::connector(pki, Some(&pki.client), SERVER_ID)?);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client_before = rss_kib(std::process::id());
    let result = client_rt.block_on(async {
        // 64 at a time, so the accept backlog never overflows.
        let mut streams = Vec::with_capacity(conns);
        let per_task = conns.div_ceil(64);
        let mut tasks = Vec::new();
        for t in 0..64 {
            let connector = connector.clone();
            let n = per_task.min(conns.saturating_sub(t * per_task));
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::with_capacity(n);
                for _ in 0..n {
                    mine.push(connect_and_wait::<S>(&connector, addr).await?);
                }
                Ok::<_, io::Error>(mine)
            }));
        }
        for task in tasks {
            streams.extend(task.await.map_err(error)??);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, io::Error>(streams)
    });
    let outcome = match result {
        Ok(streams) => {
            let held = rss_kib(pid);
            let client_after = rss_kib(std::process::id());
            Ok(format!(
                "conns={} rss_idle_kib={idle} rss_conns_kib={held} server_kib_per_conn={:.2} client_kib_per_conn={:.2} load={}",
                streams.len(),
                (held.saturating_sub(idle)) as f64 / streams.len().max(1) as f64,
                (client_after.saturating_sub(client_before)) as f64 / streams.len().max(1) as f64,
                loadavg()
            ))
        }
        Err(e) => Err(e),
    };
    child.kill().ok();
    child.wait().ok();
    outcome
}

/// The command line of a stack binary:
/// `check` | `handshakes SECONDS CLIENTS` | `exchanges SECONDS CONNS` | `memory CONNS`.
/// Prints one line of `key=value` pairs, or the error on stderr with exit status 1.
pub fn main<S: Stack>() {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: f64| -> f64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let outcome = match args.first().map(String::as_str) {
        Some("memory-server") => memory_server::<S>().map(|()| String::new()),
        Some(mode) => {
            let pki = Pki::generate();
            match mode {
                "check" => check::<S>(&pki),
                "handshakes" => handshakes::<S>(&pki, num(1, 5.0), num(2, 16.0) as usize),
                "exchanges" => exchanges::<S>(&pki, num(1, 5.0), num(2, 50.0) as usize),
                "memory" => memory::<S>(&pki, num(1, 10_000.0) as usize),
                other => Err(error(format!("unknown mode {other:?}"))),
            }
        }
        None => Err(error(
            "usage: check | handshakes SECONDS CLIENTS | exchanges SECONDS CONNS | memory CONNS",
        )),
    };
    match outcome {
        Ok(line) => println!("stack={} {line}", S::NAME),
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            std::process::exit(1);
        }
    }
}

/// The parts of a stack on the OpenSSL API that OpenSSL and BoringSSL share: the `openssl` and
/// `boring` crates have the same API but distinct types, and the two libraries cannot be linked
/// into one binary, so this expands in each stack's binary with its crate (`$ssl`).
///
/// It defines `add_identity` (the mesh CA as the only trust anchor; the chain `[leaf, CA]` and
/// its key), `mesh_server` (client certificate required, ALPN `kuma` selected), `mesh_client`
/// (the server's leaf must carry `expected`, checked at depth 0 after its chain verified; ALPN
/// `kuma` offered), `peer_uris_of`, `negotiated_of` and `alpn_of`.
#[macro_export]
macro_rules! openssl_api {
    ($ssl:ident) => {
        fn uris(cert: &$ssl::x509::X509Ref) -> Vec<String> {
            cert.subject_alt_names()
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.uri().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        }

        fn add_identity(
            ctx: &mut $ssl::ssl::SslContextBuilder,
            pki: &$crate::Pki,
            leaf: Option<&$crate::Pem>,
        ) -> std::io::Result<()> {
            let ca = $ssl::x509::X509::from_pem(pki.ca_cert.as_bytes())?;
            ctx.cert_store_mut().add_cert(ca.clone())?;
            if let Some(leaf) = leaf {
                let cert = $ssl::x509::X509::from_pem(leaf.cert.as_bytes())?;
                ctx.set_certificate(&cert)?;
                ctx.add_extra_chain_cert(ca)?;
                let key = $ssl::pkey::PKey::private_key_from_pem(leaf.key.as_bytes())?;
                ctx.set_private_key(&key)?;
                ctx.check_private_key()?;
            }
            Ok(())
        }

        fn mesh_server(mut ctx: $ssl::ssl::SslContextBuilder) -> $ssl::ssl::SslContext {
            use $ssl::ssl::SslVerifyMode;
            ctx.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            ctx.set_alpn_select_callback(|_, offered| {
                $ssl::ssl::select_next_proto(b"\x04kuma", offered)
                    .ok_or($ssl::ssl::AlpnError::NOACK)
            });
            ctx.build()
        }

        fn mesh_client(
            mut ctx: $ssl::ssl::SslContextBuilder,
            expected: &str,
        ) -> std::io::Result<$ssl::ssl::SslContext> {
            let expected = expected.to_owned();
            ctx.set_verify_callback($ssl::ssl::SslVerifyMode::PEER, move |chain_ok, store| {
                chain_ok
                    && (store.error_depth() != 0
                        || store
                            .current_cert()
                            .is_some_and(|leaf| uris(leaf).contains(&expected)))
            });
            ctx.set_alpn_protos(b"\x04kuma")?;
            Ok(ctx.build())
        }

        fn peer_uris_of(ssl: &$ssl::ssl::SslRef) -> Vec<String> {
            ssl.peer_certificate().map(|c| uris(&c)).unwrap_or_default()
        }

        fn negotiated_of(ssl: &$ssl::ssl::SslRef) -> $crate::Negotiated {
            $crate::Negotiated {
                version: ssl.version_str().to_owned(),
                cipher: ssl
                    .current_cipher()
                    .map(|c| c.name().to_owned())
                    .unwrap_or_default(),
                alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
                sni: ssl
                    .servername($ssl::ssl::NameType::HOST_NAME)
                    .map(str::to_owned),
            }
        }

        fn alpn_of(ssl: &$ssl::ssl::SslRef) -> Option<Vec<u8>> {
            ssl.selected_alpn_protocol().map(<[u8]>::to_vec)
        }
    };
}
