//! Envoy's gRPC health check (`GrpcHealthCheck`): a unary `grpc.health.v1.Health/Check` call
//! over HTTP/2 on the endpoint's transport, as Envoy's `GrpcActiveHealthCheckSession` makes
//! it: `POST /grpc.health.v1.Health/Check`, `:authority` the check's authority (else the
//! cluster's name), `content-type: application/grpc`, `te: trailers`, `user-agent: Envoy/HC`,
//! `grpc-timeout` the check's timeout, a `HealthCheckRequest{service}` frame. The endpoint is
//! healthy only on gRPC status 0 (from the trailers, or the headers of a trailers-only answer)
//! with one `HealthCheckResponse` whose status is `SERVING`; any other answer (an HTTP status
//! other than 200, no gRPC content type, a missing or other gRPC status, no message, two
//! messages, a compressed or undecodable one) fails it at once, as Envoy's `ACTIVE` failure;
//! a refused connection, a reset stream or a closed connection is a network failure.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper::header::{HeaderMap, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use bearing_proxy_config::GrpcProbe;

use crate::health_check::{spawn_connection, Kept, Verdict};
use crate::upstream::{ClusterRuntime, EndpointPool};

/// The method called.
const PATH: &str = "/grpc.health.v1.Health/Check";

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    /// The service asked about; empty: the server.
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    /// `ServingStatus`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// Runs one gRPC probe on `kept` (or a new HTTP/2 connection): the verdict, and the
/// connection to keep.
pub(crate) async fn grpc_probe(
    cluster: &ClusterRuntime,
    pool: &EndpointPool,
    probe: &GrpcProbe,
    timeout: std::time::Duration,
    kept: Option<Kept>,
) -> (Verdict, Option<Kept>) {
    let mut sender = match kept {
        Some(Kept::Grpc(sender)) => sender,
        _ => {
            let Ok(stream) = cluster.connect_probe(pool).await else {
                return (Verdict::Network, None);
            };
            let Ok((s, conn)) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
            else {
                return (Verdict::Network, None);
            };
            spawn_connection(conn, pool.address());
            s
        }
    };
    let request = match request(probe, timeout) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = %cluster.config.name, "gRPC health check request: {e}");
            return (Verdict::Network, None);
        }
    };
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(request).await,
        Err(e) => Err(e),
    };
    let Ok(response) = sent else {
        return (Verdict::Network, None);
    };
    let (head, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return (Verdict::Network, None);
    };
    let trailers = collected.trailers().cloned();
    let verdict = verdict(
        head.status.as_u16(),
        &head.headers,
        collected.to_bytes(),
        trailers.as_ref(),
    );
    (verdict, Some(Kept::Grpc(sender)))
}

/// The call: Envoy's headers and the request frame.
fn request(
    probe: &GrpcProbe,
    timeout: std::time::Duration,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let uri = hyper::Uri::builder()
        .scheme("http")
        .authority(probe.authority.as_str())
        .path_and_query(PATH)
        .build()?;
    let message = HealthCheckRequest {
        service: probe.service.clone(),
    };
    let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(message.encoded_len() as u32);
    message.encode_raw(&mut frame);
    hyper::Request::post(uri)
        .version(hyper::Version::HTTP_2)
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, "Envoy/HC")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(Full::new(frame.freeze()))
}

/// The verdict on an answer: its HTTP status and headers, its body, its trailers.
fn verdict(status: u16, headers: &HeaderMap, body: Bytes, trailers: Option<&HeaderMap>) -> Verdict {
    let failed = Verdict::Active {
        retriable: false,
        status: 0,
    };
    let grpc = headers
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(is_grpc_content_type);
    if status != 200 || !grpc {
        return failed;
    }
    // The trailers', or a trailers-only answer's in its headers.
    let grpc_status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if grpc_status != Some(0) {
        return failed;
    }
    match response_status(body) {
        Some(SERVING) => Verdict::Healthy,
        _ => failed,
    }
}

/// Whether `value` is `application/grpc` or `application/grpc+<codec>` / `;<params>` (Envoy's
/// `isGrpcResponseHeaders`).
fn is_grpc_content_type(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// The status of the one uncompressed `HealthCheckResponse` in `body`; `None` when it holds
/// none, more than one, a compressed or a truncated frame, or no such message.
fn response_status(mut body: Bytes) -> Option<i32> {
    let mut status = None;
    while body.has_remaining() {
        if body.remaining() < 5 {
            return None;
        }
        let flags = body.get_u8();
        let length = body.get_u32() as usize;
        if body.remaining() < length {
            return None;
        }
        let message = body.split_to(length);
        if length == 0 {
            continue;
        }
        if status.is_some() || flags != 0 {
            return None;
        }
        status = Some(HealthCheckResponse::decode(message).ok()?.status);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &impl Message, flags: u8) -> Vec<u8> {
        let mut out = vec![flags];
        out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        out.extend_from_slice(&message.encode_to_vec());
        out
    }

    fn grpc_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h
    }

    fn ok_trailers(code: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static(code));
        t
    }

    fn serving(status: i32) -> Bytes {
        Bytes::from(frame(&HealthCheckResponse { status }, 0))
    }

    #[test]
    fn the_call_is_envoys() {
        let probe = GrpcProbe {
            authority: "grpc-client.default.svc.cluster.local".into(),
            service: "grpc-client".into(),
        };
        let r =
            request(&probe, std::time::Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.method(), hyper::Method::POST);
        assert_eq!(
            r.uri(),
            "http://grpc-client.default.svc.cluster.local/grpc.health.v1.Health/Check"
        );
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["te"], "trailers");
        assert_eq!(r.headers()["user-agent"], "Envoy/HC");
        assert_eq!(r.headers()["grpc-timeout"], "2000m");
        let body = r.into_body();
        let bytes = futures_body(body);
        let expected = frame(
            &HealthCheckRequest {
                service: "grpc-client".into(),
            },
            0,
        );
        assert_eq!(bytes, expected);
        // The service field is 0x0a, its length, its bytes.
        assert_eq!(&bytes[..7], &[0, 0, 0, 0, 13, 0x0a, 11]);
    }

    fn futures_body(body: Full<Bytes>) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async { body.collect().await.map(|c| c.to_bytes().to_vec()) })
            .unwrap_or_else(|e| match e {})
    }

    #[test]
    fn only_status_zero_and_serving_is_healthy() {
        let h = grpc_headers();
        let failed = Verdict::Active {
            retriable: false,
            status: 0,
        };
        assert_eq!(
            verdict(200, &h, serving(SERVING), Some(&ok_trailers("0"))),
            Verdict::Healthy
        );
        // NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN.
        for status in [2, 0, 3] {
            assert_eq!(
                verdict(200, &h, serving(status), Some(&ok_trailers("0"))),
                failed
            );
        }
        // A gRPC error (trailers-only, in the headers: grpc-go's unknown service).
        let mut only = grpc_headers();
        only.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(verdict(200, &only, Bytes::new(), None), failed);
        assert_eq!(
            verdict(200, &h, serving(SERVING), Some(&ok_trailers("12"))),
            failed
        );
        // No status, no message, not gRPC, not 200.
        assert_eq!(verdict(200, &h, serving(SERVING), None), failed);
        assert_eq!(
            verdict(200, &h, Bytes::new(), Some(&ok_trailers("0"))),
            failed
        );
        let plain = HeaderMap::new();
        assert_eq!(
            verdict(200, &plain, serving(SERVING), Some(&ok_trailers("0"))),
            failed
        );
        assert_eq!(
            verdict(503, &h, serving(SERVING), Some(&ok_trailers("0"))),
            failed
        );
    }

    #[test]
    fn one_uncompressed_message_is_read() {
        let one = serving(SERVING);
        assert_eq!(response_status(one.clone()), Some(SERVING));
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        assert_eq!(response_status(Bytes::from(two)), None);
        let compressed = frame(&HealthCheckResponse { status: SERVING }, 1);
        assert_eq!(response_status(Bytes::from(compressed)), None);
        assert_eq!(response_status(one.slice(..4)), None);
        assert_eq!(response_status(one.slice(..6)), None);
        // An empty message is SERVING's default, UNKNOWN.
        assert_eq!(response_status(Bytes::from_static(&[0, 0, 0, 0, 0])), None);
        assert!(is_grpc_content_type(&HeaderValue::from_static(
            "application/grpc+proto"
        )));
        assert!(!is_grpc_content_type(&HeaderValue::from_static(
            "application/grpcx"
        )));
    }
}
