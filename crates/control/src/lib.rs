//! Config sources for Bearing and the compiler from Kuma resources to `ProxyConfig`.

pub mod compile;
pub mod directory;
pub mod template;
pub mod virtual_ips;

pub use directory::{ConfigStatus, DataplaneSource, DirectorySource, Loaded, Rejected};
pub use virtual_ips::VipOptions;
