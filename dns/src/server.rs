//! The server: hickory-server's `Server` owns the UDP sockets, `tcp.rs` the TCP listeners,
//! and [`Handler`] answers both.
//!
//! From hickory: UDP receive loop (a task per datagram), parsing, FORMERR for a message whose
//! header parses but body does not, dropping of datagrams shorter than a header and of
//! responses, encoding (with truncation to the client's UDP size). Hand-written: TCP accept and
//! framing with bounded connections and memory (`tcp.rs`), the table lookup and the upstream
//! relay (`forward.rs`).

use std::iter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::forward::{Exchange, Question};
use crate::table::{DnsTable, Lookup};
use crate::tcp;
use crate::{DnsMetrics, DnsServerConfig, Error};

/// Forwarded queries in flight at once. Each holds a socket for up to `upstream_timeout` per
/// upstream; past this, queries get SERVFAIL at once, so a flood towards a dead upstream cannot
/// exhaust the file descriptors the proxy's data path shares.
const MAX_FORWARDS_IN_FLIGHT: usize = 256;

/// The mesh DNS server, bound and ready to [`run`](DnsServer::run).
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    local: Vec<SocketAddr>,
    handler: Handler,
}

impl DnsServer {
    /// Binds UDP and TCP on every listen address (IPv6 ones are IPv6-only, so `0.0.0.0` and
    /// `[::]` can share a port). For port 0 the TCP socket takes the port UDP got, so one
    /// address serves both. `table` is read on every query: `table.store(..)` takes effect
    /// for the next one.
    pub async fn bind(
        config: DnsServerConfig,
        table: Arc<ArcSwap<DnsTable>>,
    ) -> Result<DnsServer, Error> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut local = Vec::new();
        for &address in &config.listen {
            let (udp_socket, tcp_listener, bound) = bind_pair(address)?;
            udp.push(udp_socket);
            tcp.push(tcp_listener);
            local.push(bound);
        }
        if config.upstreams.is_empty() {
            tracing::warn!("DNS: no upstream resolver; names outside the mesh get SERVFAIL");
        }
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        Ok(DnsServer {
            udp,
            tcp,
            local,
            handler: Handler {
                table,
                ttl,
                upstreams: config.upstreams.into(),
                upstream_timeout: config.upstream_timeout,
                metrics: DnsMetrics::default(),
                forwards: Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
            },
        })
    }

    /// The bound addresses (each serves UDP and TCP), in the order of the config.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The server's counters, to register with the proxy's registry.
    pub fn metrics(&self) -> &DnsMetrics {
        &self.handler.metrics
    }

    /// Counts into `metrics` (already registered by the caller) instead of its own counters.
    pub fn count_into(mut self, metrics: DnsMetrics) -> Self {
        self.handler.metrics = metrics;
        self
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and returns. An error means
    /// a socket failed for good.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let tcp_slots = Arc::new(Semaphore::new(tcp::MAX_CONNECTIONS));
        let mut tcp = tokio::task::JoinSet::new();
        for listener in self.tcp {
            tcp.spawn(tcp::serve(
                listener,
                self.handler.clone(),
                tcp_slots.clone(),
                shutdown.clone(),
            ));
        }
        let mut server = Server::new(self.handler);
        for socket in self.udp {
            server.register_socket(socket);
        }
        let finished = tokio::select! {
            result = server.block_until_done() => Some(result),
            () = shutdown.cancelled() => None,
        };
        // The TCP loops end with `shutdown`; their connections with them.
        tcp.abort_all();
        let result = match finished {
            Some(result) => result,
            None => server.shutdown_gracefully().await,
        };
        result.map_err(|e| Error::Stopped(e.to_string()))
    }
}

/// Binds UDP, then TCP on the address UDP got. With port 0 the kernel's UDP port may be
/// taken for TCP: a few other ports are tried before giving up.
fn bind_pair(address: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), Error> {
    let tries = if address.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = |protocol, address, source| Error::Bind {
            protocol,
            address,
            source,
        };
        let udp = bind_udp(address).map_err(|e| error("UDP", address, e))?;
        let bound = udp.local_addr().map_err(|e| error("UDP", address, e))?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < tries => continue,
            Err(e) => return Err(error("TCP", bound, e)),
        }
    }
}

fn bind_udp(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Answers one query: from the table, or from an upstream. Cloning shares the table, the
/// counters and the in-flight limit.
#[derive(Clone)]
pub(crate) struct Handler {
    table: Arc<ArcSwap<DnsTable>>,
    ttl: u32,
    upstreams: Arc<[SocketAddr]>,
    upstream_timeout: Duration,
    pub(crate) metrics: DnsMetrics,
    forwards: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.metrics.queries.inc();
        match self.respond(request, response_handle).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "DNS response not sent");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let builder = MessageResponseBuilder::from_message_request(request);
        if request.metadata.op_code != OpCode::Query {
            let mut response = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            response.metadata_mut().recursion_available = true;
            return response_handle.send_response(response).await;
        }
        let [query] = request.queries.queries() else {
            tracing::debug!(src = %request.src(), "DNS query without exactly one question");
            let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle.send_response(response).await;
        };

        // The table part: no allocation unless there are records to answer.
        let local = {
            let table = self.table.load();
            match table.lookup_labels(query.name().iter()) {
                Lookup::Outside => None,
                Lookup::NotFound => Some((ResponseCode::NXDomain, Vec::new())),
                Lookup::Found { a, aaaa } => {
                    let owner = || query.original().name.clone();
                    let records = match (query.query_class(), query.query_type()) {
                        (DNSClass::IN, RecordType::A) => a
                            .iter()
                            .map(|ip| Record::from_rdata(owner(), self.ttl, RData::A(A(*ip))))
                            .collect(),
                        (DNSClass::IN, RecordType::AAAA) => aaaa
                            .iter()
                            .map(|ip| Record::from_rdata(owner(), self.ttl, RData::AAAA(AAAA(*ip))))
                            .collect(),
                        _ => Vec::new(),
                    };
                    Some((ResponseCode::NoError, records))
                }
            }
        };

        if let Some((response_code, records)) = local {
            self.metrics.answered_locally.inc();
            return self
                .answer_locally(request, response_code, &records, response_handle)
                .await;
        }

        let reply = match self.forwards.try_acquire() {
            Ok(_permit) => {
                self.metrics.forwarded.inc();
                self.forward(request, query.original()).await
            }
            Err(_) => {
                tracing::debug!(name = %query.name(), "DNS: too many queries forwarded, SERVFAIL");
                None
            }
        };
        match reply {
            Some(reply) => {
                // The upstream's flags and code, our client's id and RD; its EDNS only if the
                // client sent one, sized to the client's buffer.
                let mut metadata = reply.metadata;
                metadata.id = request.metadata.id;
                metadata.recursion_desired = request.metadata.recursion_desired;
                let edns = match (&request.edns, reply.edns) {
                    (Some(asked), Some(mut edns)) => {
                        edns.set_max_payload(asked.max_payload());
                        Some(edns)
                    }
                    _ => None,
                };
                let mut builder = builder;
                if let Some(edns) = &edns {
                    builder.edns(edns);
                }
                let response = builder.build(
                    metadata,
                    &reply.answers,
                    &reply.authorities,
                    iter::empty(),
                    &reply.additionals,
                );
                response_handle.send_response(response).await
            }
            None => {
                let mut response = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                response.metadata_mut().recursion_available = true;
                response_handle.send_response(response).await
            }
        }
    }

    /// An authoritative answer: `records` (maybe none: NODATA) or NXDOMAIN. No SOA goes in
    /// the authority section, so negative answers are not cached: the table changes live.
    async fn answer_locally<R: ResponseHandler>(
        &self,
        request: &Request,
        response_code: ResponseCode,
        records: &[Record],
        mut response_handle: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        metadata.response_code = response_code;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let edns = request.edns.as_ref().map(|asked| {
            if asked.version() > 0 {
                metadata.authoritative = false;
                metadata.response_code = ResponseCode::BADVERS;
            }
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload());
            edns
        });
        let answers: &[Record] = if metadata.response_code == ResponseCode::BADVERS {
            &[]
        } else {
            records
        };
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answers,
            iter::empty(),
            iter::empty(),
            iter::empty(),
        );
        response_handle.send_response(response).await
    }

    /// Asks the upstreams in order, over the client's transport, each within the upstream
    /// timeout. A SERVFAIL or REFUSED moves on to the next; if all fail, the last such reply
    /// is relayed, else `None` (SERVFAIL).
    async fn forward(
        &self,
        request: &Request,
        query: &hickory_server::proto::op::Query,
    ) -> Option<Message> {
        let question = Question {
            name: &query.name,
            query_type: query.query_type,
            query_class: query.query_class,
        };
        let udp_buffer = request.edns.as_ref().map_or(512, Edns::max_payload);
        let exchange = Exchange::new(request.as_slice(), question, udp_buffer)?;
        let tcp = request.protocol() == Protocol::Tcp;
        let mut refused = None;
        for &upstream in self.upstreams.iter() {
            let attempt = async {
                if tcp {
                    exchange.tcp(upstream).await
                } else {
                    exchange.udp(upstream).await
                }
            };
            let error = match tokio::time::timeout(self.upstream_timeout, attempt).await {
                Ok(Ok(reply))
                    if matches!(
                        reply.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    let error = format!("answered {}", reply.metadata.response_code);
                    refused = Some(reply);
                    error
                }
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {:?}", self.upstream_timeout),
            };
            self.metrics.upstream_failures.inc();
            tracing::debug!(%upstream, tcp, %error, name = %query.name, "DNS upstream failed");
        }
        if refused.is_none() && !self.upstreams.is_empty() {
            tracing::debug!(name = %query.name, "DNS: every upstream failed, SERVFAIL");
        }
        refused
    }
}
