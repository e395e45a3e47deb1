//! The ADS stream: subscribe, hand each response to the consumer, ACK or NACK, reconnect.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::resources::{decode_response, Rejection, ResourceState, ResourceType};

/// Largest gRPC message the client accepts or sends. tonic's default of 4 MiB is far below what
/// a large mesh pushes in one response (thousands of clusters and listeners, each with TLS
/// contexts): Envoy itself applies no limit of its own to ADS responses, so allow 64 MiB.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail` (as Envoy sends).
const INVALID_ARGUMENT: i32 = 3;

/// How long connecting to the control plane may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval and timeout on the ADS connection, so a control plane that vanished
/// without closing (host down, network cut) is noticed and left for a new connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The consumer of pushed config: translates and applies it, or says why it cannot.
pub trait ConfigSink: Send {
    /// Offers `state`, the full resource set after applying the response for `changed`. `Ok`
    /// keeps it (and the client ACKs); `Err` refuses it (the client NACKs with the rejection
    /// and keeps the previous set of `changed`; the consumer keeps serving what it had).
    fn offer(&mut self, state: &ResourceState, changed: ResourceType) -> Result<(), Rejection>;
}

/// Where the dataplane token comes from. A file is read again for every new stream, as kuma-dp
/// does, so a rotated token is used from the next reconnect on.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// No token (a control plane without dataplane authentication).
    None,
    /// A fixed token (`--dataplane-token`).
    Fixed(String),
    /// A token file (`--dataplane-token-file`), read per stream; surrounding whitespace dropped.
    File(PathBuf),
}

impl TokenSource {
    /// The token for a new stream, as gRPC metadata.
    fn metadata(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, StreamError> {
        let (token, origin) = match self {
            TokenSource::None => return Ok(None),
            TokenSource::Fixed(token) => (token.trim().to_string(), "--dataplane-token".into()),
            TokenSource::File(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| StreamError::Token {
                    origin: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                (token.trim().to_string(), path.display().to_string())
            }
        };
        MetadataValue::try_from(token.as_str())
            .map(Some)
            .map_err(|_| StreamError::Token {
                origin,
                problem: "not a valid gRPC metadata value (visible ASCII only)".into(),
            })
    }
}

/// Why an ADS stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("dataplane token {origin}: {problem}")]
    Token { origin: String, problem: String },
    #[error("{}", describe_status(.0))]
    Rpc(tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// A tonic status with its transport cause, which tonic keeps out of the message.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An [`Endpoint`] for the control plane at `url` with the ADS connection's settings (connect
/// timeout, HTTP/2 and TCP keepalive). Make a channel of it with
/// [`Endpoint::connect_with_connector_lazy`] and the TLS connector for the control plane, or
/// [`Endpoint::connect_lazy`] for plaintext HTTP/2. A lazy channel connects again by itself
/// after the connection broke, on the next stream.
pub fn cp_endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(KEEPALIVE))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true))
}

/// The node Bearing presents, as the bootstrap gives it: id (`<mesh>.<name>`, see
/// [`kuma_node_id`]), cluster (the service) and metadata (see [`struct_from_json`]), with
/// Bearing as the user agent.
pub fn kuma_node(id: &str, cluster: &str, metadata: Struct) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        metadata: Some(metadata),
        user_agent_name: "bearing".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// The node id kuma-cp's bootstrap gives a proxy: `<mesh>.<name>`.
pub fn kuma_node_id(mesh: &str, name: &str) -> String {
    format!("{mesh}.{name}")
}

/// A JSON object as a protobuf `Struct` (for node metadata read from the bootstrap). Numbers
/// become doubles, as in protobuf's JSON mapping; a non-object is an empty `Struct`.
pub fn struct_from_json(value: &serde_json::Value) -> Struct {
    fn value_of(json: &serde_json::Value) -> Value {
        let kind = match json {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(value_of).collect(),
            }),
            serde_json::Value::Object(_) => Kind::StructValue(struct_from_json(json)),
        };
        Value { kind: Some(kind) }
    }
    Struct {
        fields: value
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .map(|(k, v)| (k.clone(), value_of(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Which stream problems are logged: one only when it differs from the last one logged, so a
/// control plane that stays down makes one line, not one per retry.
#[derive(Debug, Default)]
struct ProblemLog {
    last: Option<String>,
}

impl ProblemLog {
    /// Records `problem`; true when it differs from the last one (log it).
    fn is_new(&mut self, problem: &str) -> bool {
        if self.last.as_deref() == Some(problem) {
            return false;
        }
        self.last = Some(problem.to_string());
        true
    }

    /// The control plane answered; true when a problem had been logged (log the recovery).
    fn recovered(&mut self) -> bool {
        self.last.take().is_some()
    }
}

/// A State-of-the-World ADS client: one stream at a time, wildcard subscriptions to every
/// [`ResourceType`], the accepted resources kept across streams.
#[derive(Debug)]
pub struct AdsClient {
    channel: Channel,
    node: Node,
    token: TokenSource,
    state: ResourceState,
}

impl AdsClient {
    /// A client on `channel` (see [`cp_endpoint`]) presenting `node` with `token`.
    pub fn new(channel: Channel, node: Node, token: TokenSource) -> AdsClient {
        AdsClient {
            channel,
            node,
            token,
            state: ResourceState::default(),
        }
    }

    /// The accepted resources (what the consumer last kept, per type).
    pub fn state(&self) -> &ResourceState {
        &self.state
    }

    /// Runs streams forever: on any end of a stream, waits a jittered exponential back-off
    /// (reset once the control plane answers), then opens a new one and subscribes again with
    /// the accepted versions; the next response of each type is offered again in full. A reason
    /// is logged when it differs from the previous one, not on every retry.
    pub async fn run<S: ConfigSink>(&mut self, sink: &mut S) {
        let mut backoff = Backoff::default();
        let mut problems = ProblemLog::default();
        loop {
            let problem = self
                .stream(sink, &mut backoff, &mut problems)
                .await
                .to_string();
            let delay = backoff.next_delay();
            if problems.is_new(&problem) {
                tracing::warn!("ADS stream to the control plane ended: {problem}; reconnecting with back-off (next in {delay:?})");
            } else {
                tracing::debug!("ADS stream ended again: {problem}; next try in {delay:?}");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream, until it ends.
    async fn stream<S: ConfigSink>(
        &mut self,
        sink: &mut S,
        backoff: &mut Backoff,
        problems: &mut ProblemLog,
    ) -> StreamError {
        let token = match self.token.metadata() {
            Ok(token) => token,
            Err(e) => return e,
        };
        let (requests, outbound) = mpsc::channel(ResourceType::ALL.len() + 1);
        for (index, resource_type) in ResourceType::ALL.into_iter().enumerate() {
            let subscribe = DiscoveryRequest {
                version_info: self.state.version(resource_type).to_string(),
                // setNodeOnFirstMessageOnly: the node goes in the stream's first request only.
                node: (index == 0).then(|| self.node.clone()),
                type_url: resource_type.type_url().into(),
                ..Default::default()
            };
            // Capacity covers every subscription; the receiver is alive until the call below.
            let _ = requests.try_send(subscribe);
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", token);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut responses = match client.stream_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamError::Rpc(status),
        };
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return StreamError::Closed,
                Err(status) => return StreamError::Rpc(status),
            };
            backoff.reset();
            if problems.recovered() {
                tracing::info!("ADS stream to the control plane re-established");
            }
            let Some(reply) = self.respond(response, sink) else {
                continue;
            };
            if requests.send(reply).await.is_err() {
                return StreamError::Closed;
            }
        }
    }

    /// Checks a response, offers the result to `sink` and returns the ACK or NACK; `None` for a
    /// type Bearing did not subscribe to (logged and ignored, as Envoy does).
    fn respond(
        &mut self,
        response: DiscoveryResponse,
        sink: &mut dyn ConfigSink,
    ) -> Option<DiscoveryRequest> {
        let Some(resource_type) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(
                "ADS: ignoring a response of type {:?}, which Bearing did not subscribe to",
                response.type_url
            );
            return None;
        };
        let mut reply = DiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        let version = response.version_info.clone();
        let outcome = decode_response(resource_type, response).and_then(|resources| {
            let count = resources.resources.len();
            let candidate = self.state.with(resource_type, resources);
            sink.offer(&candidate, resource_type)?;
            Ok((candidate, count))
        });
        match outcome {
            Ok((candidate, count)) => {
                tracing::info!(
                    "ADS: accepted {resource_type} version {version:?} ({count} resources)"
                );
                self.state = candidate;
                reply.version_info = version;
            }
            Err(rejection) => {
                tracing::warn!(
                    "ADS: rejected {resource_type} version {version:?}, keeping version {:?}: {rejection}",
                    self.state.version(resource_type)
                );
                reply.version_info = self.state.version(resource_type).to_string();
                reply.error_detail = Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message: rejection.to_string(),
                    details: Vec::new(),
                });
            }
        }
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::to_any;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Name;

    /// Accepts everything but a cluster named `bad`.
    struct RefuseBad;

    impl ConfigSink for RefuseBad {
        fn offer(&mut self, state: &ResourceState, _: ResourceType) -> Result<(), Rejection> {
            match state.get(ResourceType::Cluster).resources.get("bad") {
                Some(_) => Err(Rejection::new("Cluster bad", "type", "not supported")),
                None => Ok(()),
            }
        }
    }

    fn clusters(version: &str, nonce: &str, names: &[&str]) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: Cluster::type_url(),
            resources: names
                .iter()
                .map(|name| {
                    to_any(&Cluster {
                        name: name.to_string(),
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        }
    }

    fn client() -> AdsClient {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        AdsClient::new(channel, Node::default(), TokenSource::None)
    }

    #[tokio::test]
    async fn acks_accepted_and_nacks_refused_keeping_the_previous_version() {
        let mut client = client();
        let ack = client
            .respond(clusters("1", "n1", &["a"]), &mut RefuseBad)
            .unwrap();
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("1", "n1")
        );
        assert!(ack.error_detail.is_none());

        let nack = client
            .respond(clusters("2", "n2", &["a", "bad"]), &mut RefuseBad)
            .unwrap();
        assert_eq!(
            (nack.version_info.as_str(), nack.response_nonce.as_str()),
            ("1", "n2")
        );
        let detail = nack.error_detail.unwrap();
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert_eq!(detail.message, "Cluster bad: type: not supported");
        assert_eq!(client.state().version(ResourceType::Cluster), "1");
        assert_eq!(
            client
                .state()
                .get(ResourceType::Cluster)
                .resources
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );

        // A malformed response is NACKed before the sink sees it.
        let nack = client
            .respond(clusters("3", "n3", &["a", "a"]), &mut RefuseBad)
            .unwrap();
        assert_eq!(nack.version_info, "1");
        assert!(nack.error_detail.unwrap().message.contains("duplicated"));
    }

    #[tokio::test]
    async fn a_push_after_a_nack_is_offered_with_the_last_acked_set_of_the_nacked_type() {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        let mut client = client();
        client.respond(clusters("1", "n1", &["a"]), &mut RefuseBad);
        let nack = client
            .respond(clusters("2", "n2", &["a", "bad"]), &mut RefuseBad)
            .unwrap();
        assert!(nack.error_detail.is_some());
        // RefuseBad refuses any state holding cluster `bad`: the Listener push is accepted
        // only if the state it is offered in holds the ACKed Clusters, not the NACKed ones.
        let listeners = DiscoveryResponse {
            version_info: "3".into(),
            nonce: "n3".into(),
            type_url: Listener::type_url(),
            resources: vec![to_any(&Listener {
                name: "l".into(),
                ..Default::default()
            })],
            ..Default::default()
        };
        let ack = client.respond(listeners, &mut RefuseBad).unwrap();
        assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
        assert_eq!(ack.version_info, "3");
        let state = client.state();
        assert_eq!(state.version(ResourceType::Cluster), "1");
        assert_eq!(
            state
                .get(ResourceType::Cluster)
                .resources
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[tokio::test]
    async fn ignores_types_it_did_not_subscribe_to() {
        let mut response = clusters("1", "n1", &[]);
        response.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
        assert!(client().respond(response, &mut RefuseBad).is_none());
    }

    #[test]
    fn a_problem_is_logged_once_until_it_changes_or_the_cp_answers() {
        let mut problems = ProblemLog::default();
        assert!(problems.is_new("connection refused"));
        assert!(!problems.is_new("connection refused"));
        assert!(problems.is_new("UNAUTHENTICATED"));
        assert!(problems.recovered());
        assert!(!problems.recovered());
        assert!(problems.is_new("UNAUTHENTICATED"));
    }

    #[test]
    fn token_file_is_read_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("bearing-xds-token-{}", std::process::id()));
        std::fs::write(&dir, "abc.def\n").unwrap();
        let token = TokenSource::File(dir.clone()).metadata().unwrap().unwrap();
        assert_eq!(token, "abc.def");
        std::fs::write(&dir, "bad\u{1}token").unwrap();
        let error = TokenSource::File(dir.clone()).metadata().unwrap_err();
        assert!(error
            .to_string()
            .contains("not a valid gRPC metadata value"));
        std::fs::remove_file(&dir).unwrap();
        let error = TokenSource::File(dir.clone()).metadata().unwrap_err();
        assert!(error
            .to_string()
            .starts_with(&format!("dataplane token {}: ", dir.display())));
        assert!(TokenSource::None.metadata().unwrap().is_none());
    }

    #[test]
    fn node_metadata_from_json() {
        let json = serde_json::json!({"dataplane.proxyType": "dataplane", "features": ["a"], "n": 1, "o": {"b": true}});
        let node = kuma_node(
            &kuma_node_id("default", "dp-1"),
            "backend",
            struct_from_json(&json),
        );
        assert_eq!(
            (node.id.as_str(), node.cluster.as_str()),
            ("default.dp-1", "backend")
        );
        let fields = node.metadata.unwrap().fields;
        assert_eq!(
            fields["dataplane.proxyType"].kind,
            Some(Kind::StringValue("dataplane".into()))
        );
        assert_eq!(fields["n"].kind, Some(Kind::NumberValue(1.0)));
        assert!(
            matches!(fields["features"].kind, Some(Kind::ListValue(ref l)) if l.values.len() == 1)
        );
        assert!(
            matches!(fields["o"].kind, Some(Kind::StructValue(ref s)) if s.fields.contains_key("b"))
        );
    }
}
