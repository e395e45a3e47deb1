//! bearing-xds: Bearing's State-of-the-World ADS client for kuma-cp (or any xDS server).
//!
//! One gRPC stream (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! StreamAggregatedResources`) with wildcard subscriptions to Cluster, ClusterLoadAssignment,
//! Listener, RouteConfiguration, Secret and Runtime. Each response is checked
//! ([`decode_response`]), merged into the full [`ResourceState`] and offered to a
//! [`ConfigSink`]; the client ACKs what the sink keeps and NACKs what it refuses with the
//! [`Rejection`] as `error_detail`, keeping the previous resources of that type. The client
//! does not translate resources; that is the sink's job.

mod backoff;
mod client;
mod resources;

pub use backoff::{Backoff, BASE_INTERVAL, MAX_INTERVAL};
pub use client::{
    cp_endpoint, kuma_node, kuma_node_id, struct_from_json, AdsClient, ConfigSink, TokenSource,
    MAX_MESSAGE_SIZE,
};
pub use envoy_types;
pub use resources::{
    decode_response, to_any, Rejection, ResourceState, ResourceType, TypeResources,
};
