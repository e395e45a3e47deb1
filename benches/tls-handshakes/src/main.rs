//! New mesh mTLS connections per second, for benches/harness.py (scenario `mtls-handshakes`).
//!
//! `tls-handshakes ADDR SECONDS THREADS CERT KEY PATH`: each thread, until SECONDS have passed,
//! opens a TCP connection, does a full TLS 1.3 handshake presenting CERT/KEY (no session
//! resumption, ALPN `kuma`, no SNI: rustls sends only DNS names and Kuma's `backend{mesh=default}`
//! is not one; a sidecar inbound does not route on it), sends `GET PATH` with `Connection: close`, reads the response to
//! the end and closes. Prints one JSON line: connections that got a 200, errors, the wall time
//! and per-connection latency percentiles in microseconds.
//!
//! To keep the client cheaper than the server it measures, it does not verify the server (chain
//! or CertificateVerify signature): its handshake is the key exchange plus one ECDSA signature.
//! The harness checks the server's identity with a verifying client before the run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
struct NoVerify(Vec<SignatureScheme>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// One connection: handshake, request, whole response. Whether the response was a 200.
fn one(addr: &str, cfg: &Arc<ClientConfig>, sni: &ServerName<'static>, req: &[u8]) -> std::io::Result<bool> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let mut conn = ClientConnection::new(cfg.clone(), sni.clone()).map_err(std::io::Error::other)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(req)?;
    let mut resp = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            // A close without close_notify after the whole response is the end of it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(resp.starts_with(b"HTTP/1.1 200 ") || resp.starts_with(b"HTTP/1.0 200 "))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: tls-handshakes ADDR SECONDS THREADS CERT KEY PATH");
        std::process::exit(2);
    }
    let (addr, path) = (args[1].clone(), &args[6]);
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let threads: usize = args[3].parse().expect("THREADS");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args[4])
        .expect("CERT")
        .collect::<Result<_, _>>()
        .expect("CERT");
    let key = PrivateKeyDer::from_pem_file(&args[5]).expect("KEY");
    let sni = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()); // no SNI sent
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(schemes)))
        .with_client_auth_cert(certs, key)
        .expect("client certificate");
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = vec![b"kuma".to_vec()];
    let cfg = Arc::new(cfg);
    let req = format!("GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n").into_bytes();

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, cfg, sni, req) = (addr.clone(), cfg.clone(), sni.clone(), req.clone());
            std::thread::spawn(move || {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match one(&addr, &cfg, &sni, &req) {
                        Ok(true) => lat.push(t.elapsed().as_micros() as u64),
                        Ok(false) | Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.join().expect("client thread");
        lat.extend(l);
        errors += e;
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p / 100.0) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "JSON {{\"connections\":{},\"errors\":{},\"seconds\":{:.4},\"p50\":{},\"p99\":{},\"p999\":{}}}",
        lat.len(), errors, wall, pct(50.0), pct(99.0), pct(99.9)
    );
}
