//! Envoy's xDS resources as Bearing reads them: decoding from Kuma's golden formats (and any
//! protobuf JSON) into `Any`s, and their translation into `ProxyConfig`, with a NACK naming
//! the field for everything Bearing does not implement.

mod access_log;
mod balance;
pub mod decode;
mod fields;
mod health;
mod http_filters;
mod lua;
mod naming;
mod rbac;
mod retry;
mod routes;
pub use fields::POLICY_NOT_ENFORCED;
pub mod translate;

pub use decode::{
    decode_json_resource, decode_raw, load_golden, parse_golden, read_golden, DecodeError,
    GoldenResource, RawResource,
};
pub use translate::{translate, Nack, NodeInfo, ResourceSet};
