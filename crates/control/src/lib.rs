//! Config sources for Bearing and the compiler from Kuma resources to `ProxyConfig`.

pub mod compile;
pub mod directory;
mod gateway;
pub mod mtls;
mod permissions;
pub mod template;
pub mod virtual_ips;
pub mod zone_proxies;
pub mod zones;

pub use directory::{
    ConfigStatus, DataplaneSource, DirectorySource, Fingerprint, LoadError, Loaded, ProxyKind,
    Rejected,
};
pub use virtual_ips::VipOptions;
