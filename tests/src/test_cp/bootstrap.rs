//! `POST /bootstrap` as kuma-cp answers it: `{bootstrap: base64(YAML), kumaSidecarConfiguration}`,
//! the bootstrap's `ads_cluster` pointing back at this control plane as the client reached it.

use base64::Engine;
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{Event, Shared};

/// kuma-cp's answer when a token is required and the request carries none.
const TOKEN_REQUIRED: &str = "Dataplane Token is required. Generate token using 'kumactl generate dataplane-token > /path/file' and provide it via --dataplane-token-file=/path/file argument to Kuma DP";

/// A plain-text response with `status`.
pub(super) fn text(status: u16, body: impl Into<String>) -> Response<tonic::body::Body> {
    respond(status, "text/plain", Bytes::from(body.into()))
}

fn respond(status: u16, content_type: &str, body: Bytes) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Answers one non-gRPC request: `POST /bootstrap`, else kuma-cp's 404.
pub(super) fn handle(shared: &Shared, head: &Parts, body: &[u8]) -> Response<tonic::body::Body> {
    if head.uri.path() != "/bootstrap" {
        return text(404, "404: Page Not Found");
    }
    if head.method != Method::POST {
        return text(405, "405: Method Not Allowed");
    }
    let (node, response) = match bootstrap(shared, head, body) {
        Ok((node, document)) => (
            node,
            respond(200, "application/json", Bytes::from(document.to_string())),
        ),
        Err((status, node, message)) => (node, text(status, message)),
    };
    shared.emit(Event::Bootstrap {
        node,
        status: response.status().as_u16(),
    });
    response
}

/// Error: status, node id (if known) and message.
type Refusal = (u16, String, String);

/// The node id and the response document of a bootstrap request.
fn bootstrap(shared: &Shared, head: &Parts, body: &[u8]) -> Result<(String, Value), Refusal> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        (
            400,
            String::new(),
            format!("the body is not a bootstrap request: {e}"),
        )
    })?;
    let field = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    // The Dataplane resource (a JSON string) names the proxy when the request does not.
    let dataplane: Value = match field("dataplaneResource") {
        "" => Value::Null,
        text => serde_json::from_str(text)
            .map_err(|e| (422, String::new(), format!("dataplaneResource: {e}")))?,
    };
    let from_dataplane = |name: &str| {
        dataplane
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let name = Some(field("name"))
        .filter(|n| !n.is_empty())
        .unwrap_or(from_dataplane("name"));
    let mesh = Some(field("mesh"))
        .filter(|n| !n.is_empty())
        .or(Some(from_dataplane("mesh")).filter(|n| !n.is_empty()))
        .unwrap_or("default");
    let node = if name.is_empty() {
        String::new()
    } else {
        format!("{mesh}.{name}")
    };
    let token = field("dataplaneToken");
    match shared.required_token() {
        Err(e) => return Err((500, node, e)),
        Ok(Some(_)) if token.is_empty() => return Err((422, node, TOKEN_REQUIRED.into())),
        Ok(_) => {}
    }
    if name.is_empty() {
        return Err((
            422,
            node,
            "name: cannot be empty (neither the request nor dataplaneResource names the proxy)"
                .into(),
        ));
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| head.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (cp_host, cp_port) = split_host_port(&host);
    let mut metadata = json!({
        "dataplane.proxyType": Some(field("proxyType")).filter(|t| !t.is_empty()).unwrap_or("dataplane"),
        "dataplane.resource": field("dataplaneResource"),
        "features": request.get("features").cloned().unwrap_or(json!([])),
        "version": request.get("version").cloned().unwrap_or(json!({})),
        "workdir": field("workdir"),
        "systemCaPath": field("systemCaPath"),
        "ipv6Enabled": request.get("ipv6Enabled").cloned().unwrap_or(json!(false)),
    });
    for (key, source) in [
        ("dataplane.dns.port", "dnsPort"),
        ("dataplane.readinessReporter.port", "readinessPort"),
    ] {
        if let Some(port) = request.get(source).filter(|p| p.is_number()) {
            metadata[key] = json!(port.to_string());
        }
    }
    // Envoy's admin as kuma-cp places it: the Dataplane's `networking.admin.port`, else
    // kuma-cp's default (bootstrapServer.params.adminPort, 9901), on loopback.
    let admin_port = dataplane
        .pointer("/networking/admin/port")
        .and_then(Value::as_u64)
        .unwrap_or(9901);
    metadata["dataplane.admin.port"] = json!(admin_port.to_string());
    metadata["dataplane.admin.address"] = json!("127.0.0.1");
    if let Some(dynamic) = request.get("dynamicMetadata").filter(|d| d.is_object()) {
        metadata["dynamicMetadata"] = dynamic.clone();
    }
    let mut grpc_service = json!({"envoyGrpc": {"clusterName": "ads_cluster"}});
    if !token.is_empty() {
        grpc_service["initialMetadata"] = json!([{"key": "authorization", "value": token}]);
    }
    let mut ads_cluster = json!({
        "name": "ads_cluster",
        "type": "STRICT_DNS",
        "connectTimeout": "1s",
        "loadAssignment": {"clusterName": "ads_cluster", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": cp_host, "portValue": cp_port}}}}]}]},
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"http2ProtocolOptions": {}}}},
    });
    let mut secrets = json!([]);
    if let Some((_, cert_pem)) = &shared.config.tls {
        ads_cluster["transportSocket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "commonTlsContext": {"tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
                    "validationContextSdsSecretConfig": {"name": "cp_validation_ctx"}},
                "sni": cp_host,
            },
        });
        secrets = json!([{"name": "cp_validation_ctx", "validationContext": {"trustedCa": {
            "inlineBytes": base64::engine::general_purpose::STANDARD.encode(cert_pem)}}}]);
    }
    let document = json!({
        "node": {"id": node, "cluster": name, "metadata": metadata},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3", "setNodeOnFirstMessageOnly": true, "grpcServices": [grpc_service]},
            "cdsConfig": {"ads": {}, "initialFetchTimeout": "0s", "resourceApiVersion": "V3"},
            "ldsConfig": {"ads": {}, "initialFetchTimeout": "0s", "resourceApiVersion": "V3"},
        },
        "staticResources": {"clusters": [ads_cluster], "secrets": secrets},
    });
    let address = dataplane
        .pointer("/networking/address")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // JSON is a YAML 1.2 document, so the bootstrap is sent as JSON text.
    let response = json!({
        "bootstrap": base64::engine::general_purpose::STANDARD.encode(document.to_string()),
        "kumaSidecarConfiguration": {
            "networking": {"address": address, "corefileTemplate": ""},
            "metrics": {"aggregate": aggregate(&dataplane, address)},
        },
    });
    Ok((node, response))
}

/// The application metrics endpoints kuma-cp hands the proxy: the Dataplane's prometheus
/// `metrics.conf.aggregate` entries that are not disabled, each with the Dataplane's address
/// when it gives none (kuma-cp's bootstrap generator; the Mesh's backend is not modelled).
fn aggregate(dataplane: &Value, dataplane_address: &str) -> Vec<Value> {
    let entries = dataplane
        .pointer("/metrics/conf/aggregate")
        .and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .filter(|e| e.get("enabled").and_then(Value::as_bool) != Some(false))
        .map(|e| {
            let text = |name: &str| e.get(name).and_then(Value::as_str).unwrap_or_default();
            let address = Some(text("address"))
                .filter(|a| !a.is_empty())
                .unwrap_or(dataplane_address);
            json!({
                "name": text("name"),
                "address": address,
                "port": e.get("port").and_then(Value::as_u64).unwrap_or_default(),
                "path": text("path"),
            })
        })
        .collect()
}

/// `host:port` (or `[v6]:port`) split; the port is 5678 (kuma-cp's) when absent.
fn split_host_port(authority: &str) -> (String, u16) {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && port.parse::<u16>().is_ok() => {
            (host, port.parse().unwrap_or(5678))
        }
        _ => (authority, 5678),
    };
    (
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    )
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn splits_authorities() {
        assert_eq!(split_host_port("cp:5679"), ("cp".into(), 5679));
        assert_eq!(split_host_port("[::1]:80"), ("::1".into(), 80));
        assert_eq!(split_host_port("cp"), ("cp".into(), 5678));
    }
}
