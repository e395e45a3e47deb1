//! SotW ADS with go-control-plane's semantics: a response per subscribed type whenever the
//! snapshot's version differs from what the stream last got, a fresh nonce per response, a
//! request carrying the current nonce is an ACK (no `error_detail`) or a NACK, a request with
//! an older nonce is stale and ignored. A NACKed version is not sent again; the next snapshot
//! is. A type first requested without names (or with `*`) is a wildcard subscription; one
//! requested by name (Envoy's EDS and RDS) gets those resources only, and is answered again
//! when its names change (Envoy adding an EDS cluster asks again with the last nonce).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use bearing_xds::ResourceType;

use super::{Event, Shared, Snapshot};

/// Responses buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 16;

/// The ADS service of one connection.
pub(super) struct Ads {
    shared: Arc<Shared>,
}

impl Ads {
    pub(super) fn new(shared: Arc<Shared>) -> Ads {
        Ads { shared }
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let required = self.shared.required_token().map_err(|e| {
            self.shared.emit(Event::Refused { reason: e.clone() });
            Status::internal(e)
        })?;
        if let Some(required) = required {
            if token.as_deref() != Some(required.as_str()) {
                let reason = match token {
                    None => "no authorization metadata".to_string(),
                    Some(_) => "the authorization metadata is not the dataplane token".to_string(),
                };
                self.shared.emit(Event::Refused {
                    reason: reason.clone(),
                });
                return Err(Status::unauthenticated(reason));
            }
        }
        let (responses, outbound) = mpsc::channel(STREAM_BUFFER);
        let stream = AdsStream {
            shared: self.shared.clone(),
            responses,
            node: String::new(),
            token,
            sent: BTreeMap::new(),
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(outbound)))
    }

    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the test control plane serves State-of-the-World ADS only",
        ))
    }
}

/// What a stream subscribed to and last got of one type.
#[derive(Default)]
struct Sent {
    version: Option<String>,
    nonce: Option<String>,
    /// The names subscribed to; `None` for a wildcard subscription.
    names: Option<BTreeSet<String>>,
}

impl Sent {
    /// Takes the names of a request; true when they differ from the subscription's.
    fn subscribe(&mut self, names: &[String]) -> bool {
        // Legacy wildcard: no names on the first request (or `*`) subscribes to everything,
        // and a wildcard subscription stays one while requests name nothing.
        // (A new subscription starts as a wildcard one.)
        let wildcard = names.iter().any(|n| n == "*") || (names.is_empty() && self.names.is_none());
        let names = if wildcard {
            None
        } else {
            Some(names.iter().cloned().collect())
        };
        let changed = self.names != names;
        self.names = names;
        changed
    }
}

/// One ADS stream's state.
struct AdsStream {
    shared: Arc<Shared>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    node: String,
    token: Option<String>,
    /// Subscribed types and what each last got.
    sent: BTreeMap<String, Sent>,
}

impl AdsStream {
    /// Serves requests and snapshot changes until the client goes or the CP stops.
    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        let mut snapshots = self.shared.snapshot.subscribe();
        let stop = self.shared.stop.clone();
        loop {
            let open = tokio::select! {
                _ = stop.cancelled() => false,
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        // Not marked seen: a change still reaches the types sent earlier.
                        let snapshot = snapshots.borrow().clone();
                        self.request(request, &snapshot).await
                    }
                    Ok(None) | Err(_) => false,
                },
                changed = snapshots.changed() => match changed {
                    Ok(()) => {
                        let snapshot = snapshots.borrow_and_update().clone();
                        self.push_changed(&snapshot).await
                    }
                    Err(_) => false,
                },
            };
            if !open {
                return;
            }
        }
    }

    /// Handles one request; false when the stream is gone.
    async fn request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> bool {
        if self.node.is_empty() {
            if let Some(node) = &request.node {
                self.node = node.id.clone();
                self.shared.emit(Event::Connect {
                    node: self.node.clone(),
                    token: self.token.clone(),
                });
            }
        }
        let type_url = request.type_url.clone();
        let sent = self.sent.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if sent.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                return true; // stale: answers an older response
            }
            let names_changed = sent.subscribe(&request.resource_names);
            let event = match request.error_detail {
                Some(detail) => Event::Nack {
                    type_url: type_url.clone(),
                    version: sent.version.clone().unwrap_or_default(),
                    kept: request.version_info,
                    node: self.node.clone(),
                    detail: detail.message,
                },
                None => Event::Ack {
                    type_url: type_url.clone(),
                    version: request.version_info,
                    node: self.node.clone(),
                },
            };
            self.shared.emit(event);
            return !names_changed || self.push(&type_url, snapshot).await;
        }
        // A subscription: answered unless the client already has this version (and names).
        let names_changed = sent.subscribe(&request.resource_names);
        let answer = match sent.version {
            None => request.version_info != snapshot.version,
            Some(_) => names_changed,
        };
        !answer || self.push(&type_url, snapshot).await
    }

    /// Sends every subscribed type whose last response had another version.
    async fn push_changed(&mut self, snapshot: &Snapshot) -> bool {
        let stale: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, sent)| sent.version.as_deref() != Some(snapshot.version.as_str()))
            .map(|(type_url, _)| type_url.clone())
            .collect();
        for type_url in stale {
            if !self.push(&type_url, snapshot).await {
                return false;
            }
        }
        true
    }

    /// Sends the snapshot's resources of `type_url` (those subscribed by name, or all; none is
    /// an empty list); false when the stream is gone.
    async fn push(&mut self, type_url: &str, snapshot: &Snapshot) -> bool {
        let nonce = (self.shared.nonces.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        let all = snapshot
            .resources
            .get(type_url)
            .map_or(&[][..], Vec::as_slice);
        let sent = self.sent.entry(type_url.to_string()).or_default();
        let resources: Vec<_> = match (&sent.names, ResourceType::from_type_url(type_url)) {
            (Some(names), Some(resource_type)) => all
                .iter()
                .filter(|any| {
                    resource_type
                        .decode_name(&any.value)
                        .is_ok_and(|name| names.contains(&name))
                })
                .cloned()
                .collect(),
            _ => all.to_vec(),
        };
        let count = resources.len();
        let response = DiscoveryResponse {
            version_info: snapshot.version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        sent.version = Some(snapshot.version.clone());
        sent.nonce = Some(nonce.clone());
        if self.responses.send(Ok(response)).await.is_err() {
            return false;
        }
        self.shared.emit(Event::Push {
            type_url: type_url.to_string(),
            version: snapshot.version.clone(),
            nonce,
            node: self.node.clone(),
            resources: count,
        });
        true
    }
}
