//! In-process tests: the server on loopback with ephemeral ports, a fake upstream resolver
//! (UDP and TCP) in the test, and hickory-proto messages as the client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bearing_dns::{DnsRecord, DnsServer, DnsServerConfig, DnsTable};
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long a test waits for a reply that must come.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// How long a test waits to conclude that no reply comes.
const SILENCE: Duration = Duration::from_millis(300);

/// The answer of the fake upstream for any name but `big.example.`.
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn record(name: &str, ips: &[&str]) -> DnsRecord {
    DnsRecord {
        name: name.to_string(),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
    }
}

fn kuma_table() -> DnsTable {
    DnsTable::new(
        "mesh",
        [
            record("httpbin.mesh", &["240.0.0.1", "::ffff:f000:1"]),
            record("backend.mesh", &["240.0.0.0"]),
        ],
    )
}

/// A resolver on loopback (UDP and TCP on one port) answering `A 192.0.2.1` with TTL 60 for
/// every name, with TC over UDP for `big.example.`; `many-<n>.example.` gets `n` addresses
/// whatever size the client asked for (an upstream ignoring it). Remembers the last query.
struct FakeUpstream {
    address: SocketAddr,
    last_query: Arc<Mutex<Option<Message>>>,
}

impl FakeUpstream {
    async fn start() -> FakeUpstream {
        // UDP and TCP on one port: retry while the UDP port is taken for TCP.
        let (udp, tcp, address) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let address = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(address).await {
                break (udp, tcp, address);
            }
        };
        let last_query = Arc::new(Mutex::new(None));
        let last = last_query.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                let reply = Self::reply(&buf[..n], &last, true);
                udp.send_to(&reply, peer).await.unwrap();
            }
        });
        let last = last_query.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                let reply = Self::reply(&buf, &last, false);
                stream.write_u16(reply.len() as u16).await.unwrap();
                stream.write_all(&reply).await.unwrap();
            }
        });
        FakeUpstream {
            address,
            last_query,
        }
    }

    fn reply(bytes: &[u8], last: &Mutex<Option<Message>>, udp: bool) -> Vec<u8> {
        let query = Message::from_vec(bytes).unwrap();
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.queries = query.queries.clone();
        let name = query.queries[0].name.clone();
        let many = name
            .to_ascii()
            .strip_prefix("many-")
            .and_then(|rest| rest.strip_suffix(".example."))
            .and_then(|n| n.parse::<u32>().ok());
        if udp && name == Name::from_str("big.example.").unwrap() {
            reply.metadata.truncation = true;
        } else if let Some(n) = many {
            for i in 0..n {
                let ip = Ipv4Addr::from(u32::from(UPSTREAM_IP) + i);
                reply.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(ip))));
            }
        } else {
            reply.add_answer(Record::from_rdata(name, 60, RData::A(A(UPSTREAM_IP))));
        }
        if let Some(edns) = &query.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload());
            reply.set_edns(ours);
        }
        *last.lock().unwrap() = Some(query);
        reply.to_vec().unwrap()
    }

    fn last_query(&self) -> Message {
        self.last_query
            .lock()
            .unwrap()
            .clone()
            .expect("upstream was asked")
    }
}

struct Running {
    address: SocketAddr,
    table: Arc<ArcSwap<DnsTable>>,
    server_metrics: bearing_dns::DnsMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), bearing_dns::Error>>,
}

async fn start(upstreams: Vec<SocketAddr>, upstream_timeout: Duration) -> Running {
    let table = Arc::new(ArcSwap::from_pointee(kuma_table()));
    let config = DnsServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams,
        upstream_timeout,
        ..DnsServerConfig::default()
    };
    let server = DnsServer::bind(config, table.clone()).await.unwrap();
    let address = server.local_addrs()[0];
    let server_metrics = server.metrics().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Running {
        address,
        table,
        server_metrics,
        shutdown,
        task,
    }
}

fn query_message(name: &str, query_type: RecordType, edns: bool) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_str(name).unwrap(), query_type));
    message.metadata.recursion_desired = true;
    if edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        message.set_edns(edns);
    }
    message
}

/// Sends a datagram; the reply, or `None` when none comes within `wait`.
async fn udp_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn tcp_exchange(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Sends one query over UDP and checks the reply's id and question.
async fn ask(server: SocketAddr, name: &str, query_type: RecordType) -> Message {
    ask_with(server, query_message(name, query_type, false), false).await
}

async fn ask_with(server: SocketAddr, query: Message, tcp: bool) -> Message {
    let bytes = query.to_vec().unwrap();
    let reply = if tcp {
        tcp_exchange(server, &bytes).await
    } else {
        udp_exchange(server, &bytes, REPLY_WAIT)
            .await
            .expect("a reply")
    };
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, query.metadata.id, "client's query id");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.queries, query.queries, "question echoed");
    reply
}

fn a_addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mesh_names_are_answered_from_the_table() {
    let dns = start(Vec::new(), Duration::from_millis(200)).await;

    let reply = ask(dns.address, "httpbin.mesh.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);
    assert_eq!(reply.answers[0].ttl, 30, "Kuma's answer TTL");
    assert_eq!(
        reply.answers[0].name,
        Name::from_str("httpbin.mesh.").unwrap()
    );

    // Case-insensitive, owner name as asked.
    let reply = ask(dns.address, "HttpBin.MESH.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);

    let reply = ask(dns.address, "httpbin.mesh.", RecordType::AAAA).await;
    let aaaa: Vec<Ipv6Addr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
        .collect();
    assert_eq!(aaaa, ["::ffff:240.0.0.1".parse::<Ipv6Addr>().unwrap()]);
    assert_eq!(reply.answers[0].ttl, 30);

    // NODATA: a known name without IPv6, or asked for another type.
    for (name, query_type) in [
        ("backend.mesh.", RecordType::AAAA),
        ("httpbin.mesh.", RecordType::TXT),
        ("mesh.", RecordType::A),
    ] {
        let reply = ask(dns.address, name, query_type).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name} {query_type}"
        );
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty(), "{name} {query_type}");
    }

    // NXDOMAIN under the mesh domain, without asking anyone.
    let reply = ask(dns.address, "nope.mesh.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative);

    // EDNS is answered with EDNS.
    let reply = ask_with(
        dns.address,
        query_message("httpbin.mesh.", RecordType::A, true),
        false,
    )
    .await;
    assert!(reply.edns.is_some());

    let metrics = &dns.server_metrics;
    assert_eq!(metrics.queries.get(), 8);
    assert_eq!(metrics.answered_locally.get(), 8);
    assert_eq!(metrics.forwarded.get(), 0);
    dns.shutdown.cancel();
    dns.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn other_names_are_forwarded_over_the_client_transport() {
    let upstream = FakeUpstream::start().await;
    let dns = start(vec![upstream.address], Duration::from_secs(2)).await;

    // UDP, with EDNS and the DO bit, which reach the upstream unchanged.
    let query = query_message("Example.COM.", RecordType::A, true);
    let reply = ask_with(dns.address, query.clone(), false).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(!reply.metadata.authoritative);
    assert!(reply.metadata.recursion_available);
    assert_eq!(a_addresses(&reply), [UPSTREAM_IP]);
    assert_eq!(reply.answers[0].ttl, 60, "the upstream's TTL");
    assert!(reply.edns.is_some());
    let seen = upstream.last_query();
    assert_eq!(
        seen.queries, query.queries,
        "question as the client asked it"
    );
    assert!(seen.metadata.recursion_desired);
    let edns = seen.edns.expect("client's EDNS forwarded");
    assert!(edns.flags().dnssec_ok);
    assert_eq!(edns.max_payload(), 1232);

    // TCP client: forwarded over TCP.
    let reply = ask_with(
        dns.address,
        query_message("tcp.example.", RecordType::A, false),
        true,
    )
    .await;
    assert_eq!(a_addresses(&reply), [UPSTREAM_IP]);

    // A truncated UDP answer is relayed with TC; the client's retry over TCP gets it all.
    let reply = ask(dns.address, "big.example.", RecordType::A).await;
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
    let reply = ask_with(
        dns.address,
        query_message("big.example.", RecordType::A, false),
        true,
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(a_addresses(&reply), [UPSTREAM_IP]);

    // Mesh names over TCP come from the table.
    let reply = ask_with(
        dns.address,
        query_message("httpbin.mesh.", RecordType::A, false),
        true,
    )
    .await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);
    assert!(reply.metadata.authoritative);

    assert_eq!(dns.server_metrics.forwarded.get(), 4);
    assert_eq!(dns.server_metrics.answered_locally.get(), 1);
    assert_eq!(dns.server_metrics.upstream_failures.get(), 0);
}

#[tokio::test]
async fn dead_upstreams_give_servfail_within_the_bound() {
    // One that never answers (bound, silent) and one that refuses (closed port).
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    };
    let timeout = Duration::from_millis(300);
    let dns = start(vec![silent.local_addr().unwrap(), closed], timeout).await;

    let started = Instant::now();
    let reply = ask(dns.address, "example.com.", RecordType::A).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(elapsed >= timeout, "waited for the silent one: {elapsed:?}");
    assert!(
        elapsed < timeout * 2 + Duration::from_millis(700),
        "{elapsed:?}"
    );
    assert_eq!(dns.server_metrics.upstream_failures.get(), 2);

    // Over TCP too (nothing listens on either port).
    let started = Instant::now();
    let reply = ask_with(
        dns.address,
        query_message("example.com.", RecordType::A, false),
        true,
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < timeout * 2 + Duration::from_millis(700));

    // No upstream at all: SERVFAIL at once.
    let none = start(Vec::new(), timeout).await;
    let reply = ask(none.address, "example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn next_upstream_answers_after_a_silent_one() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = FakeUpstream::start().await;
    let dns = start(
        vec![silent.local_addr().unwrap(), upstream.address],
        Duration::from_millis(200),
    )
    .await;
    let reply = ask(dns.address, "example.com.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [UPSTREAM_IP]);
    assert_eq!(dns.server_metrics.upstream_failures.get(), 1);
}

#[tokio::test]
async fn a_new_table_answers_the_next_query() {
    let dns = start(Vec::new(), Duration::from_millis(200)).await;
    let reply = ask(dns.address, "backend.mesh.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 0)]);

    dns.table.store(Arc::new(DnsTable::new(
        "mesh",
        [
            record("backend.mesh", &["240.0.0.7"]),
            record("web.mesh", &["240.0.0.8"]),
        ],
    )));
    let reply = ask(dns.address, "backend.mesh.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 7)]);
    let reply = ask(dns.address, "web.mesh.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 8)]);
    let reply = ask(dns.address, "httpbin.mesh.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn malformed_packets_do_not_stop_the_server() {
    let dns = start(Vec::new(), Duration::from_millis(200)).await;

    // Shorter than a header: dropped without reply.
    assert_eq!(udp_exchange(dns.address, &[1, 2, 3], SILENCE).await, None);

    // A header announcing a question that is not there: FORMERR with the id.
    let header = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = udp_exchange(dns.address, &header, REPLY_WAIT)
        .await
        .expect("FORMERR");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // A header followed by garbage.
    let mut junk = header.to_vec();
    junk.extend_from_slice(&[0xff; 40]);
    let reply = udp_exchange(dns.address, &junk, REPLY_WAIT)
        .await
        .expect("FORMERR");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // Two questions: FORMERR.
    let mut two = query_message("a.mesh.", RecordType::A, false);
    two.add_query(Query::query(
        Name::from_str("b.mesh.").unwrap(),
        RecordType::A,
    ));
    let reply = udp_exchange(dns.address, &two.to_vec().unwrap(), REPLY_WAIT)
        .await
        .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // A response sent to us is ignored (no reflection).
    let mut response = query_message("httpbin.mesh.", RecordType::A, false);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        udp_exchange(dns.address, &response.to_vec().unwrap(), SILENCE).await,
        None
    );

    // TCP garbage, then a connection that closes mid-length.
    let mut stream = TcpStream::connect(dns.address).await.unwrap();
    stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    drop(stream);
    let mut stream = TcpStream::connect(dns.address).await.unwrap();
    stream.write_all(&[0]).await.unwrap();
    drop(stream);

    // Still serving, both ways.
    let reply = ask(dns.address, "httpbin.mesh.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);
    let reply = ask_with(
        dns.address,
        query_message("httpbin.mesh.", RecordType::A, false),
        true,
    )
    .await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);
    assert!(!dns.task.is_finished());
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = taken.local_addr().unwrap();
    let config = DnsServerConfig {
        listen: vec![address],
        ..DnsServerConfig::default()
    };
    let table = Arc::new(ArcSwap::from_pointee(DnsTable::default()));
    let Err(error) = DnsServer::bind(config, table).await else {
        panic!("bound a taken port");
    };
    let text = error.to_string();
    assert!(
        text.contains(&address.to_string()) && text.contains("UDP"),
        "{text}"
    );
}

#[tokio::test]
async fn edns_version_and_opcode_checks() {
    let dns = start(Vec::new(), Duration::from_millis(200)).await;

    let mut query = query_message("httpbin.mesh.", RecordType::A, true);
    if let Some(edns) = query.edns.as_mut() {
        edns.set_version(1);
    }
    let reply = ask_with(dns.address, query, false).await;
    // 16 is BADVERS in a reply's EDNS (hickory decodes it under its other name, BADSIG).
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(reply.edns.is_some());
    assert!(reply.answers.is_empty());

    let mut query = query_message("httpbin.mesh.", RecordType::A, false);
    query.metadata.op_code = OpCode::Status;
    let reply = ask_with(dns.address, query, false).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[tokio::test]
async fn forwards_in_flight_are_bounded() {
    // 300 queries towards a silent upstream: 256 wait for it, the rest get SERVFAIL at once.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = start(vec![silent.local_addr().unwrap()], Duration::from_secs(3)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for id in 0..300u16 {
        let mut query = query_message("example.com.", RecordType::A, false);
        query.metadata.id = id;
        client
            .send_to(&query.to_vec().unwrap(), dns.address)
            .await
            .unwrap();
        if id % 50 == 49 {
            // Let the server drain its socket buffer: no datagram may be dropped.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut servfails = 0;
    let mut buf = [0u8; 512];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await
    {
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        servfails += 1;
    }
    assert_eq!(servfails, 300 - 256);
    assert_eq!(dns.server_metrics.forwarded.get(), 256);
    assert_eq!(dns.server_metrics.queries.get(), 300);
}

#[tokio::test]
async fn an_oversized_udp_answer_is_relayed_truncated() {
    let upstream = FakeUpstream::start().await;
    let dns = start(vec![upstream.address], Duration::from_secs(2)).await;

    // 60 addresses (about 1 KB) for a client without EDNS: as many as fit in 512 bytes, TC.
    let reply = ask(dns.address, "many-60.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        reply.metadata.truncation,
        "TC tells the client to retry over TCP"
    );
    let fitted = a_addresses(&reply).len();
    assert!(fitted > 0 && fitted < 60, "{fitted} addresses in 512 bytes");
    let reply = ask_with(
        dns.address,
        query_message("many-60.example.", RecordType::A, false),
        true,
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(a_addresses(&reply).len(), 60, "the TCP retry gets them all");

    // With EDNS (1232 bytes) the same 60 fit whole.
    let reply = ask_with(
        dns.address,
        query_message("many-60.example.", RecordType::A, true),
        false,
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(a_addresses(&reply).len(), 60);

    // Larger than the server reads (300 addresses, about 5 KB): the header alone, with TC.
    let reply = ask(dns.address, "many-300.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
    assert_eq!(dns.server_metrics.upstream_failures.get(), 0);
}

#[tokio::test]
async fn a_label_holding_a_dot_is_one_label() {
    let upstream = FakeUpstream::start().await;
    let dns = start(vec![upstream.address], Duration::from_secs(2)).await;
    let one_label = |labels: &[&[u8]]| {
        let mut query = Message::query();
        let name = Name::from_labels(labels.iter().copied()).unwrap();
        query.add_query(Query::query(name, RecordType::A));
        query
    };

    // `httpbin\.mesh.` is a top-level name of its own: not the table's `httpbin.mesh`.
    let reply = ask_with(dns.address, one_label(&[b"httpbin.mesh"]), false).await;
    assert!(!reply.metadata.authoritative);
    assert_eq!(a_addresses(&reply), [UPSTREAM_IP], "forwarded");
    // `backend\.x.mesh.` lies under the domain but no table name has such a label.
    let reply = ask_with(dns.address, one_label(&[b"httpbin.x", b"mesh"]), true).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(dns.server_metrics.forwarded.get(), 1);
}

#[tokio::test]
async fn tcp_connections_and_their_memory_are_bounded() {
    let dns = start(Vec::new(), Duration::from_millis(200)).await;

    // 300 connections, each announcing a 65,535-byte query and sending two bytes of it.
    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(dns.address).await.unwrap();
        stream.write_all(&[0xff, 0xff, 1, 2]).await.unwrap();
        flood.push(stream);
    }
    // Past the connection limit, connections are closed at once and counted.
    let deadline = Instant::now() + REPLY_WAIT;
    while dns.server_metrics.tcp_refused.get() < 300 - 256 {
        assert!(Instant::now() < deadline, "excess connections not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // UDP is answered meanwhile.
    let reply = ask(dns.address, "httpbin.mesh.", RecordType::A).await;
    assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);

    // The incomplete queries are cut within the message timeout (2 s).
    for mut stream in flood {
        let mut byte = [0u8; 1];
        let end = tokio::time::timeout(REPLY_WAIT, stream.read(&mut byte)).await;
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "a flood connection was closed"
        );
    }
    let held = started.elapsed();
    assert!(held < Duration::from_secs(4), "flood held {held:?}");

    // Then TCP answers again, several queries on one connection.
    let mut stream = TcpStream::connect(dns.address).await.unwrap();
    for _ in 0..3 {
        let query = query_message("httpbin.mesh.", RecordType::A, false)
            .to_vec()
            .unwrap();
        stream.write_u16(query.len() as u16).await.unwrap();
        stream.write_all(&query).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf).unwrap();
        assert_eq!(a_addresses(&reply), [Ipv4Addr::new(240, 0, 0, 1)]);
    }
}
