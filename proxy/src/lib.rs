//! Bearing: a service-mesh data-plane proxy for Kuma written natively in Rust.
//!
//! The binary (`src/main.rs`) runs the command line ([`cli`], its flags in [`args`]); this
//! library holds the runtime ([`runtime`]: applying configs, binding sockets, running each
//! connection through the stages), the stages of a connection in order: [`accept`],
//! filter-chain match ([`snapshot`], [`filter_chain`], transparent-proxy [`capture`]),
//! [`transport`] (mesh mTLS, SNI peek), the network filters ([`tcp_proxy`], [`sni`] routing,
//! builtin [`gateway`], the HTTP connection manager and its codecs [`hcm`]), the [`router`]
//! and the clusters ([`upstream`], hostnames resolved by [`dns_cluster`]); then metrics
//! ([`stats`]), the admin API ([`admin`]), Kuma's readiness and Prometheus endpoints
//! ([`kuma_endpoints`]) and the worker threads ([`workers`]).

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod args;
pub mod balance;
pub mod body;
pub mod capture;
pub mod circuit;
pub mod cli;
pub mod cp_source;
pub mod descriptors;
pub mod direct_response;
pub mod dns_cluster;
pub mod fault;
pub mod filter_chain;
pub mod gateway;
pub mod hcm;
pub mod health;
pub mod health_check;
pub(crate) mod health_events;
pub(crate) mod health_grpc;
pub mod idle;
pub mod io;
pub mod kuma_dp_flags;
pub mod kuma_endpoints;
pub mod mesh_tls;
pub mod outlier;
pub mod priority;
pub mod rate_limit;
pub mod rbac;
pub(crate) mod retry_priority;
pub mod router;
pub mod runtime;
pub mod snapshot;
pub mod sni;
pub mod splice;
pub mod startup_heap;
pub mod stats;
pub mod tcp_proxy;
pub mod transport;
pub mod upstream;
pub mod upstream_tls;
pub mod workers;
