//! Envoy's xDS resources as Bearing reads them: decoding from Kuma's golden formats (and any
//! protobuf JSON) into `Any`s, for the test control plane and the conformance tests.

pub mod decode;

pub use decode::{
    decode_json_resource, decode_raw, load_golden, parse_golden, read_golden, DecodeError,
    GoldenResource, RawResource,
};
