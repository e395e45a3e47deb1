//! The resource types Bearing subscribes to and the set of resources it holds for each.
//!
//! A [`DiscoveryResponse`] is decoded defensively here: every resource must carry the response's
//! type, decode as that type and have a unique, non-empty name. Anything else is a
//! [`Rejection`] (a NACK), never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryResponse, Resource};
use envoy_types::pb::envoy::service::runtime::v3::Runtime;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The xDS resource types of a wildcard State-of-the-World subscription, in the order Envoy
/// subscribes to them over ADS (CDS, EDS, LDS, RDS, SDS, then RTDS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS; builtin gateways only).
    RouteConfiguration,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS over ADS).
    Secret,
    /// `envoy.service.runtime.v3.Runtime` (RTDS).
    Runtime,
}

/// Type URL of Envoy's `Resource` wrapper, which a server may put around each resource.
const RESOURCE_WRAPPER_TYPE_URL: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

impl ResourceType {
    /// Every type, in subscription order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Secret,
        ResourceType::Runtime,
    ];

    /// The type URL (`type.googleapis.com/<full message name>`), as used in Any and in requests.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
            ResourceType::Runtime => "type.googleapis.com/envoy.service.runtime.v3.Runtime",
        }
    }

    /// The type whose URL this is, if Bearing subscribes to it.
    pub fn from_type_url(type_url: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.type_url() == type_url)
    }

    /// The short message name (`Cluster`, `Listener`, ...), for logs and NACK details.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => Cluster::NAME,
            ResourceType::ClusterLoadAssignment => ClusterLoadAssignment::NAME,
            ResourceType::Listener => Listener::NAME,
            ResourceType::RouteConfiguration => RouteConfiguration::NAME,
            ResourceType::Secret => Secret::NAME,
            ResourceType::Runtime => Runtime::NAME,
        }
    }

    /// Decodes `bytes` as this type and returns the resource's name (`cluster_name` for a
    /// ClusterLoadAssignment), which keys it in the SotW set.
    pub fn decode_name(self, bytes: &[u8]) -> Result<String, prost::DecodeError> {
        Ok(match self {
            ResourceType::Cluster => Cluster::decode(bytes)?.name,
            ResourceType::ClusterLoadAssignment => {
                ClusterLoadAssignment::decode(bytes)?.cluster_name
            }
            ResourceType::Listener => Listener::decode(bytes)?.name,
            ResourceType::RouteConfiguration => RouteConfiguration::decode(bytes)?.name,
            ResourceType::Secret => Secret::decode(bytes)?.name,
            ResourceType::Runtime => Runtime::decode(bytes)?.name,
        })
    }

    /// The field that names a resource of this type.
    fn name_field(self) -> &'static str {
        match self {
            ResourceType::ClusterLoadAssignment => "cluster_name",
            _ => "name",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A refusal of a pushed config: which resource, which field and why. It becomes the NACK's
/// `error_detail` message, `<resource>: <field>: <reason>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The resource, as its type and name (`Listener inbound:10.0.0.1:80`) or its position in
    /// the response when it has no usable name (`Cluster #3`).
    pub resource: String,
    /// The field path inside the resource (`filter_chains[0].filters[1].typed_config`), or a
    /// description of the part of the response that is wrong.
    pub field: String,
    /// Why the field is refused.
    pub reason: String,
}

impl Rejection {
    /// A rejection of `field` of `resource` for `reason`.
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Rejection {
        Rejection {
            resource: resource.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.resource, self.field, self.reason)
    }
}

impl std::error::Error for Rejection {}

/// The accepted resources of one type: the version they came with and each by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeResources {
    /// The `version_info` of the response these resources came in (empty before the first).
    pub version: String,
    /// The resources by name, each as the Any it was sent in (`type_url` is the type's).
    pub resources: BTreeMap<String, Any>,
}

/// The full current resource set: every subscribed type with its resources. Types share their
/// maps through `Arc`, so offering a candidate that replaces one type copies nothing else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceState {
    types: BTreeMap<ResourceType, Arc<TypeResources>>,
}

impl ResourceState {
    /// The resources of `resource_type` (an empty set when none were accepted yet).
    pub fn get(&self, resource_type: ResourceType) -> &TypeResources {
        static EMPTY: TypeResources = TypeResources {
            version: String::new(),
            resources: BTreeMap::new(),
        };
        self.types.get(&resource_type).map_or(&EMPTY, |t| t)
    }

    /// The accepted version of `resource_type` (empty before the first response of that type).
    pub fn version(&self, resource_type: ResourceType) -> &str {
        &self.get(resource_type).version
    }

    /// The resources of `resource_type` as this state shares them with every state derived
    /// from it (`None` before the first response of that type): a consumer that keeps the
    /// `Arc` tells by `Arc::ptr_eq` whether a later state still holds the same set.
    pub fn shared(&self, resource_type: ResourceType) -> Option<&Arc<TypeResources>> {
        self.types.get(&resource_type)
    }

    /// Every type that has received a response, with its resources, in subscription order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &TypeResources)> {
        self.types.iter().map(|(t, r)| (*t, r.as_ref()))
    }

    /// This state with `resource_type`'s set replaced by `resources`.
    pub fn with(&self, resource_type: ResourceType, resources: TypeResources) -> ResourceState {
        let mut next = self.clone();
        next.types.insert(resource_type, Arc::new(resources));
        next
    }
}

/// `message` packed as an Any with its type URL, as a control plane sends it.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Decodes a response's resources into a by-name set, checking each one: the Any's type is the
/// response's (after unwrapping Envoy's `Resource` wrapper), it decodes, and its name is
/// non-empty and unique. The first problem is returned as a [`Rejection`]. The response is
/// taken by value so that its resources move into the set without a copy.
pub fn decode_response(
    resource_type: ResourceType,
    response: DiscoveryResponse,
) -> Result<TypeResources, Rejection> {
    let type_name = resource_type.short_name();
    if response.nonce.is_empty() {
        return Err(Rejection::new(
            format!("{type_name} response version {:?}", response.version_info),
            "nonce",
            "missing: a response without a nonce cannot be acknowledged",
        ));
    }
    let mut resources = BTreeMap::new();
    for (index, any) in response.resources.into_iter().enumerate() {
        let position = format!("{type_name} #{index}");
        let (wrapper_name, any) = unwrap_resource(any, &position)?;
        if any.type_url != response.type_url {
            return Err(Rejection::new(
                position,
                "type_url",
                format!(
                    "{:?} differs from the response's type {:?}",
                    any.type_url, response.type_url
                ),
            ));
        }
        let name = resource_type.decode_name(&any.value).map_err(|e| {
            Rejection::new(
                position.clone(),
                "value",
                format!("does not decode as {type_name}: {e}"),
            )
        })?;
        if name.is_empty() {
            return Err(Rejection::new(
                position,
                resource_type.name_field(),
                "empty: every resource needs a name",
            ));
        }
        if let Some(wrapper_name) = wrapper_name.filter(|w| !w.is_empty() && *w != name) {
            return Err(Rejection::new(
                format!("{type_name} {name}"),
                "Resource.name",
                format!("the wrapper names it {wrapper_name:?}"),
            ));
        }
        if resources.contains_key(&name) {
            return Err(Rejection::new(
                format!("{type_name} {name}"),
                resource_type.name_field(),
                format!("duplicated in the response (again at #{index})"),
            ));
        }
        resources.insert(name, any);
    }
    Ok(TypeResources {
        version: response.version_info,
        resources,
    })
}

/// Unwraps Envoy's `Resource` wrapper if `any` is one: the wrapper's name and the inner Any.
fn unwrap_resource(any: Any, position: &str) -> Result<(Option<String>, Any), Rejection> {
    if any.type_url != RESOURCE_WRAPPER_TYPE_URL {
        return Ok((None, any));
    }
    let wrapper = Resource::decode(any.value.as_slice()).map_err(|e| {
        Rejection::new(
            position,
            "value",
            format!("does not decode as {}: {e}", Resource::NAME),
        )
    })?;
    let inner = wrapper
        .resource
        .ok_or_else(|| Rejection::new(position, "Resource.resource", "missing"))?;
    Ok((Some(wrapper.name), inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> Any {
        to_any(&Cluster {
            name: name.into(),
            ..Default::default()
        })
    }

    fn response(resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v1".into(),
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "n1".into(),
            resources,
            ..Default::default()
        }
    }

    #[test]
    fn type_urls_are_the_messages_own() {
        assert_eq!(ResourceType::Cluster.type_url(), Cluster::type_url());
        assert_eq!(
            ResourceType::ClusterLoadAssignment.type_url(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(ResourceType::Listener.type_url(), Listener::type_url());
        assert_eq!(
            ResourceType::RouteConfiguration.type_url(),
            RouteConfiguration::type_url()
        );
        assert_eq!(ResourceType::Secret.type_url(), Secret::type_url());
        assert_eq!(ResourceType::Runtime.type_url(), Runtime::type_url());
        assert_eq!(RESOURCE_WRAPPER_TYPE_URL, Resource::type_url());
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
    }

    #[test]
    fn decodes_resources_by_name() {
        let set = decode_response(
            ResourceType::Cluster,
            response(vec![cluster("b"), cluster("a")]),
        )
        .unwrap();
        assert_eq!(set.version, "v1");
        assert_eq!(set.resources.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(set.resources["a"], cluster("a"));
    }

    #[test]
    fn unwraps_envoy_resource_wrapper() {
        let wrapped = to_any(&Resource {
            name: "a".into(),
            resource: Some(cluster("a")),
            ..Default::default()
        });
        let set = decode_response(ResourceType::Cluster, response(vec![wrapped])).unwrap();
        assert_eq!(set.resources["a"], cluster("a"));
    }

    #[test]
    fn rejects_every_malformed_response_with_a_named_field() {
        let listener = to_any(&Listener {
            name: "l".into(),
            ..Default::default()
        });
        let mut truncated = cluster("a-long-enough-name");
        truncated.value.truncate(5);
        let mut no_nonce = response(vec![cluster("a")]);
        no_nonce.nonce.clear();
        let bad_wrapper = to_any(&Resource {
            name: "x".into(),
            resource: Some(cluster("a")),
            ..Default::default()
        });
        let cases = [
            (no_nonce, "Cluster response version \"v1\": nonce: missing"),
            (
                response(vec![cluster("a"), listener]),
                "Cluster #1: type_url: \"type.googleapis.com/envoy.config.listener.v3.Listener\" differs",
            ),
            (
                response(vec![truncated]),
                "Cluster #0: value: does not decode as Cluster:",
            ),
            (response(vec![cluster("")]), "Cluster #0: name: empty"),
            (
                response(vec![cluster("a"), cluster("a")]),
                "Cluster a: name: duplicated in the response (again at #1)",
            ),
            (
                response(vec![bad_wrapper]),
                "Cluster a: Resource.name: the wrapper names it \"x\"",
            ),
        ];
        for (response, expected) in cases {
            let rejection = decode_response(ResourceType::Cluster, response).unwrap_err();
            assert!(
                rejection.to_string().starts_with(expected),
                "{rejection} does not start with {expected}"
            );
        }
    }

    #[test]
    fn state_replaces_one_type_and_keeps_the_others() {
        let first = TypeResources {
            version: "1".into(),
            resources: BTreeMap::from([("a".to_string(), cluster("a"))]),
        };
        let state = ResourceState::default().with(ResourceType::Cluster, first.clone());
        let next = state.with(ResourceType::Listener, TypeResources::default());
        assert_eq!(next.get(ResourceType::Cluster), &first);
        let shared = |s: &ResourceState| s.shared(ResourceType::Cluster).cloned();
        assert!(
            Arc::ptr_eq(&shared(&state).unwrap(), &shared(&next).unwrap()),
            "the untouched type is shared, not copied"
        );
        assert!(next.shared(ResourceType::Secret).is_none());
        assert_eq!(next.version(ResourceType::Secret), "");
        assert_eq!(
            next.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            [ResourceType::Cluster, ResourceType::Listener]
        );
    }
}
