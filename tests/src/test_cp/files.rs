//! Resources from files in Kuma's golden formats (decoded by bearing-envoy-config), and the
//! poll that serves them again when a file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use envoy_types::pb::google::protobuf::Any;

use super::{Resources, TestCp};

/// How often the files are checked for a change (size or modification time).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Reads every file (`resources: [{name, resource}]` YAML, the gateway snapshot YAML or the e2e
/// `{xds: {typeURL: {name: resource}}}` JSON) into one set of resources. A resource given twice
/// (same type and name) is an error naming both places.
pub fn load_files(paths: &[PathBuf]) -> Result<Resources> {
    let mut resources: Resources = BTreeMap::new();
    let mut origin: BTreeMap<(String, String), String> = BTreeMap::new();
    for path in paths {
        let file = path.display().to_string();
        for golden in bearing_envoy_config::load_golden(path)? {
            let key = (golden.type_url.clone(), golden.name.clone());
            if let Some(first) = origin.insert(key, file.clone()) {
                bail!(
                    "{file}: {} {}: already given by {first}",
                    golden.type_url,
                    golden.name
                );
            }
            resources.entry(golden.type_url).or_default().push(Any {
                type_url: golden.resource.type_url,
                value: golden.resource.value,
            });
        }
    }
    Ok(resources)
}

/// What a change of a file shows: its modification time and size (`None` when unreadable).
fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Polls `paths` every [`POLL_INTERVAL`] and serves them again when one changed and then held
/// still for one more poll (so a file caught half-written is not served); a set that does not
/// load is reported through `report` and the previous snapshot keeps being served.
pub async fn watch_files(cp: &TestCp, paths: &[PathBuf], report: impl Fn(&str)) {
    let mut served = stamps(paths);
    let mut last = served.clone();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = stamps(paths);
        let settled = now == last;
        last = now;
        if !settled || last == served {
            continue;
        }
        served = last.clone();
        match load_files(paths) {
            Ok(resources) => {
                cp.set_resources(resources);
            }
            Err(e) => report(&format!(
                "{e:#}; still serving version {}",
                cp.snapshot().version
            )),
        }
    }
}

/// A rustls server config (ALPN h2, http/1.1) from PEM files, and the certificate's PEM (for
/// the bootstrap's `cp_validation_ctx`).
pub fn tls_config(
    cert: &Path,
    key: &Path,
) -> Result<(std::sync::Arc<rustls::ServerConfig>, String)> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = std::fs::read_to_string(cert).with_context(|| format!("{}", cert.display()))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: certificates", cert.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((std::sync::Arc::new(config), pem))
}
