//! Resources as kuma-cp renders them for a builtin gateway (MeshGateway), for tests that feed
//! a gateway from `bearing-test-cp`: its HTTP connection manager with Kuma's defaults and
//! filters, and the clusters of its backends.

use std::net::SocketAddr;

use serde_json::{json, Value};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Kuma's gateway HTTP connection manager (its builtin gateway defaults, the local rate limit,
/// gzip compressor and router filters), its routes from RDS `routes`.
pub fn gateway_manager(routes: &str) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "@type": HCM,
        "statPrefix": "gateway-default",
        "commonHttpProtocolOptions": {"headersWithUnderscoresAction": "REJECT_REQUEST", "idleTimeout": "300s"},
        "httpFilters": [
            {"name": "envoy.filters.http.local_ratelimit", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "statPrefix": "rate_limit"}},
            {"name": "gzip-compress", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
                "compressorLibrary": {"name": "gzip", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"}},
                "responseDirectionConfig": {"disableOnEtagHeader": true},
            }},
            {"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "mergeSlashes": true,
        "normalizePath": true,
        "pathWithEscapedSlashesAction": "UNESCAPE_AND_REDIRECT",
        "rds": {"configSource": {"ads": {}, "resourceApiVersion": "V3"}, "routeConfigName": routes},
        "requestHeadersTimeout": "0.500s",
        "serverName": "Kuma Gateway",
        "streamIdleTimeout": "5s",
        "useRemoteAddress": true,
    }})
}

/// A STATIC cluster `name` of one endpoint at `at`, spoken to over HTTP/1.1 (Kuma's gateway
/// clusters carry explicit HTTP options).
pub fn gateway_cluster(name: &str, at: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connectTimeout": "5s",
        "perConnectionBufferLimitBytes": 32768,
        "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicitHttpConfig": {"httpProtocolOptions": {}},
        }},
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [{"endpoint": {
            "address": {"socketAddress": {"address": at.ip().to_string(), "portValue": at.port()}}
        }}]}]},
    })
}
