//! bearing-test-cp: a file-driven control plane for tests and for trying Bearing without
//! kuma-cp. Serves kuma-cp's `POST /bootstrap` and State-of-the-World ADS on one port (plain
//! HTTP/2 or TLS) from Envoy resources in Kuma's golden formats, serves them again when a file
//! changes, and prints one line per event on stdout (`LISTEN`, `SNAPSHOT`, `BOOTSTRAP`,
//! `CONNECT`, `PUSH`, `ACK`, `NACK`, `REFUSED`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bearing_e2e::test_cp::{load_files, tls_config, watch_files, TestCp, TestCpConfig};
use clap::Parser;
use tokio::sync::broadcast::error::RecvError;

/// Command line.
#[derive(Parser)]
#[command(
    name = "bearing-test-cp",
    about = "A file-driven xDS control plane for tests"
)]
struct Args {
    /// Address to listen on (`127.0.0.1:5678`; port 0 picks one, printed as `LISTEN addr=`).
    #[arg(long)]
    listen: String,
    /// Certificate chain (PEM) to serve TLS with; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A file holding the dataplane token: `/bootstrap` without a token is refused (422) and
    /// an ADS stream whose `authorization` is not this token is refused (UNAUTHENTICATED).
    #[arg(long)]
    require_token: Option<PathBuf>,
    /// Files of Envoy resources (`resources: [{name, resource}]` YAML, gateway snapshot YAML,
    /// or e2e `{xds: {typeURL: {name: resource}}}` JSON), served as one snapshot.
    #[arg(long, num_args = 1.., required = true)]
    resources: Vec<PathBuf>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("bearing-test-cp: {e:#}");
        std::process::exit(2);
    }
}

/// Serves until Ctrl-C; an error before serving (bad files, TLS, address) ends it.
async fn run(args: Args) -> Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let resources = load_files(&args.resources)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let config = TestCpConfig {
        tls,
        require_token: args.require_token,
    };
    let cp = TestCp::start(listener, config, resources)?;
    let mut events = cp.events();
    let snapshot = cp.snapshot();
    println!("LISTEN addr={}", cp.addr());
    println!(
        "SNAPSHOT version={} resources={}",
        snapshot.version,
        snapshot.len()
    );
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => println!("{event}"),
                Err(RecvError::Lagged(lost)) => println!("LAGGED events={lost}"),
                Err(RecvError::Closed) => return,
            }
        }
    });
    tokio::select! {
        _ = watch_files(&cp, &args.resources, |problem| eprintln!("bearing-test-cp: {problem}")) => {}
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
