//! Bearing: a service-mesh data-plane proxy for Kuma written natively in Rust.
//!
//! The binary (`src/main.rs`) parses the command line; this library holds the runtime:
//! listeners and connection handling ([`runtime`]), transparent-proxy capture ([`capture`]),
//! the HTTP connection manager and its codecs ([`hcm`]), clusters and their pools ([`upstream`]), builtin gateway listeners
//! ([`gateway`]), metrics ([`stats`]), the admin API ([`admin`]), Kuma's readiness and
//! Prometheus endpoints ([`kuma_endpoints`]) and the worker threads ([`workers`]).

pub mod admin;
pub mod body;
pub mod capture;
pub mod circuit;
pub mod cli;
pub mod cp_source;
pub mod descriptors;
pub mod gateway;
pub mod hcm;
pub mod io;
pub mod kuma_dp_flags;
pub mod kuma_endpoints;
pub mod mesh_tls;
pub mod runtime;
pub mod sni;
pub mod splice;
pub mod startup_heap;
pub mod stats;
pub mod upstream;
pub mod workers;
