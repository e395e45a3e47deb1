//! Request mirroring (a route's `request_mirror_policies`): a copy of the request goes to
//! the mirror cluster in the background, its answer read and dropped, as Envoy's router
//! shadows requests. The router names the mirror; the connection manager sends the copy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Request;
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

use super::hyper_codec::send;
use crate::upstream::{ClusterRuntime, RequestBody};

/// Largest request body copied for a mirror; bigger requests are forwarded but not mirrored
/// (the body streams through once and is not held).
const MAX_MIRRORED_BODY: u64 = 64 * 1024;
/// How long a mirrored request's response may take, to its end, when the mirror cluster has
/// no request timeout (gRPC): Kuma's default route timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends a copy of the request to `mirror` in the background (its response is dropped) and
/// gives back the body for the real request. Bodies up to [`MAX_MIRRORED_BODY`] are read once
/// and sent to both; larger or unknown-length bodies are not mirrored. As Envoy does, the
/// copy's Host gets a `-shadow` suffix so the mirror can tell copies apart.
pub(crate) async fn mirror_request(
    parts: &http::request::Parts,
    body: Incoming,
    mirror: &Arc<ClusterRuntime>,
    listener: &str,
) -> RequestBody {
    let small = body.is_end_stream()
        || body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_MIRRORED_BODY);
    if !small {
        tracing::debug!(%listener, cluster = %mirror.config.name, "request body too large to mirror");
        return RequestBody::Streamed(body);
    }
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(%listener, "request body failed before mirroring: {e}");
            Bytes::new()
        }
    };
    spawn_mirror(parts, bytes.clone(), mirror, listener);
    RequestBody::Held(Full::new(bytes))
}

/// Sends a copy of the request (`parts` with `body`) to `mirror` in the background; its
/// response body is read frame by frame and each frame dropped as it arrives, so a mirror
/// holds no more than one frame whatever it answers. The whole exchange has the mirror
/// cluster's request timeout (as Envoy gives a shadow the route's timeout), or
/// [`MIRROR_TIMEOUT`]; the primary request never waits for any of it.
pub(crate) fn spawn_mirror(
    parts: &http::request::Parts,
    body: Bytes,
    mirror: &Arc<ClusterRuntime>,
    listener: &str,
) {
    let mut copy = Request::new(RequestBody::Held(Full::new(body)));
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    shadow_host(copy.headers_mut());
    let (cluster, listener) = (mirror.clone(), listener.to_string());
    tokio::spawn(async move {
        let limit = cluster.config.request_timeout.unwrap_or(MIRROR_TIMEOUT);
        let exchange = async {
            let mut body = send(copy, &cluster, (Some(limit), None, None), false)
                .await
                .into_body();
            // Read to its end so the upstream connection goes back to the pool.
            while let Some(frame) = body.frame().await {
                if let Err(e) = frame {
                    tracing::debug!(%listener, cluster = %cluster.config.name, "mirror response failed: {e}");
                    break;
                }
            }
        };
        if tokio::time::timeout(limit, exchange).await.is_err() {
            tracing::debug!(%listener, cluster = %cluster.config.name, "mirror response not done within {limit:?}: dropped");
        }
    });
}

/// `host` → `host-shadow` (before any port), as Envoy marks mirrored requests.
fn shadow_host(headers: &mut http::HeaderMap) {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let shadow = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    };
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        headers.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_keeps_the_port() {
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example.com:8080"));
        shadow_host(&mut h);
        assert_eq!(h[header::HOST], "a.example.com-shadow:8080");
        h.insert(header::HOST, HeaderValue::from_static("a.example.com"));
        shadow_host(&mut h);
        assert_eq!(h[header::HOST], "a.example.com-shadow");
    }
}
