//! Role-based access control on an inbound: who may open a connection (Envoy's network
//! `rbac` filter) or send a request (its HTTP `rbac` filter), as kuma-cp renders
//! MeshTrafficPermission and TrafficPermission. Both of Envoy's forms are held: `rules`
//! (policies of permissions and principals, one action) and the `matcher` tree (predicates on
//! the peer's URI SANs and the connection's SNI, first match decides).

use serde::Serialize;

/// One RBAC filter: what it enforces and what it only counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rbac {
    /// What decides (`rules` or `matcher`); `None`: everything passes (Envoy's filter with
    /// neither enforces nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforced: Option<RbacEngine>,
    /// Evaluated and counted, never enforced (`shadow_rules` or `shadow_matcher`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RbacEngine>,
}

/// How one set of rules decides.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RbacEngine {
    /// Envoy's `rules`: the action applies when any policy matches.
    Rules(RbacRules),
    /// Envoy's `matcher`: the first matching predicate's action, else `on_no_match`'s.
    Matcher(RbacMatcher),
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum RbacAction {
    /// Let it pass.
    Allow,
    /// Refuse it.
    Deny,
}

/// Envoy's `rules`: with `Allow`, only what a policy matches passes; with `Deny`, what a
/// policy matches is refused and the rest passes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RbacRules {
    /// What a match means.
    pub action: RbacAction,
    /// The policies, by name (sorted; order does not change the decision).
    pub policies: Vec<RbacPolicy>,
}

/// A policy: it matches when one of its permissions and one of its principals match.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RbacPolicy {
    /// Its name in the filter (kuma-cp: `MeshTrafficPermission`).
    pub name: String,
    /// What is asked for.
    pub permissions: Vec<RbacPermission>,
    /// Who asks.
    pub principals: Vec<RbacPrincipal>,
}

/// What a connection or request asks for (kuma-cp sets only `any`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RbacPermission {
    /// Anything.
    Any,
    /// Every one of these.
    And(Vec<RbacPermission>),
    /// One of these.
    Or(Vec<RbacPermission>),
    /// Not this.
    Not(Box<RbacPermission>),
}

/// Who connects.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RbacPrincipal {
    /// Anyone.
    Any,
    /// A peer with a verified certificate, whose name matches if a matcher is given (Envoy:
    /// any URI SAN, else any DNS SAN, else the subject in RFC 2253 form).
    Authenticated(Option<RbacString>),
    /// Every one of these.
    And(Vec<RbacPrincipal>),
    /// One of these.
    Or(Vec<RbacPrincipal>),
    /// Not this.
    Not(Box<RbacPrincipal>),
}

/// A string condition (Envoy's `StringMatcher`, case-sensitive).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RbacString {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Ends with this.
    Suffix(String),
    /// Holds this.
    Contains(String),
}

impl RbacString {
    /// Whether `value` meets this condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            RbacString::Exact(s) => value == s,
            RbacString::Prefix(s) => value.starts_with(s.as_str()),
            RbacString::Suffix(s) => value.ends_with(s.as_str()),
            RbacString::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// Envoy's RBAC `matcher` tree (a matcher list).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RbacMatcher {
    /// In order: the first whose predicate holds decides.
    pub matchers: Vec<RbacMatch>,
    /// When none holds; `None`: refused (Envoy's RBAC matcher denies without a decision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_no_match: Option<RbacDecision>,
}

/// A predicate and the decision it leads to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RbacMatch {
    /// When it applies.
    pub predicate: RbacPredicate,
    /// What it decides.
    pub decision: RbacDecision,
}

/// An action with the policy name it comes from (`envoy.config.rbac.v3.Action`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RbacDecision {
    /// The policy's name (kuma-cp: the MeshTrafficPermission's KRI, or `default`).
    pub policy: String,
    /// Allow or deny.
    pub action: RbacAction,
}

/// A matcher predicate.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RbacPredicate {
    /// An input's value meets a string condition; an input without a value meets none.
    Single {
        /// What is read.
        input: RbacInput,
        /// What it must be.
        value: RbacString,
    },
    /// Every one of these.
    And(Vec<RbacPredicate>),
    /// One of these.
    Or(Vec<RbacPredicate>),
    /// Not this.
    Not(Box<RbacPredicate>),
}

/// What a matcher predicate reads from the connection.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RbacInput {
    /// The peer certificate's URI SANs joined by `,` (`envoy.matching.inputs.uri_san`); no
    /// value without a peer certificate or URI SAN.
    UriSan,
    /// The SNI the client sent (`envoy.matching.inputs.server_name`); no value without one.
    ServerName,
}
