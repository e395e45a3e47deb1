//! Transparent proxying for Bearing, compatible with `kumactl install transparent-proxy`:
//! the configuration (flags and Kuma's config file), a pure rule builder producing Kuma's
//! chains, rules and comments per IP family, and install/uninstall through the iptables
//! binaries (atomic per family, idempotent, leaving other rules alone).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flags = bearing_iptables::InstallFlags::default();
//! let (config, _warnings) = flags.resolve()?;
//! let report = bearing_iptables::install(&config)?;
//! for line in report.lines { println!("{line}"); }
//! # Ok(()) }
//! ```

pub mod builder;
pub mod config;
pub mod file;
pub mod flags;
pub mod host;
pub mod install;
pub mod restore;
pub mod rule;
pub mod user;

pub use builder::{build, Environment, Ruleset, Table};
pub use config::{Config, ConfigError, Family, IpFamilyMode};
pub use flags::InstallFlags;
pub use install::{dry_run, install, uninstall, Backend, Error, Report};
