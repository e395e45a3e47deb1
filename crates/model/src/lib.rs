//! Kuma Universal resources for Bearing: typed structs, YAML loading that remembers source
//! lines, and validation whose every problem reads `file:line: Type/name: field: problem`.

pub mod gateway;
pub mod gotemplate;
pub mod policies;
pub mod resources;
pub mod store;
pub mod validate;
pub mod yaml;

pub use gateway::*;
pub use resources::*;
pub use store::{IgnoredResource, Origin, Problem, Resource, Store};
