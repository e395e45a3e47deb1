//! The mesh DNS server (`bearing_dns::DnsServer`), driven end to end over UDP on loopback: the
//! fuzzer's bytes are the client's datagram, and a fake upstream resolver answers forwarded
//! queries with fuzzer-chosen bytes (then with a well-formed reply, so every query ends).
//!
//! Input: `[query length (2 bytes)][query][upstream reply]`.
//!
//! Properties: a datagram with a full header that is not itself a response gets a reply with
//! the client's id and QR set that parses as DNS (a response gets none, or a bare FORMERR when
//! its body does not parse: no reflection); a table name asked for `A` is
//! answered with the table's address; the server keeps answering (checked after every input).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bearing_dns::{DnsRecord, DnsServer, DnsServerConfig, DnsTable};
use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::RecordType;
use libfuzzer_sys::fuzz_target;

/// The table's one name and its address.
const NAME: &str = "backend.mesh";
const ADDRESS: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 1);
/// Long enough for a loaded machine; only waited for when a reply is missing (a finding).
const REPLY_WAIT: Duration = Duration::from_secs(10);

struct Harness {
    server: SocketAddr,
    /// The client's socket and the probe's, kept for the whole run: a socket bound per query
    /// could get the port of the last one, and with it a late reply to an earlier input.
    client: UdpSocket,
    prober: UdpSocket,
    /// What the fake upstream sends first for the next forwarded query.
    upstream_reply: Arc<Mutex<Vec<u8>>>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("fake upstream socket");
        let upstream_addr = upstream.local_addr().expect("fake upstream address");
        let upstream_reply = Arc::new(Mutex::new(Vec::new()));
        let reply = upstream_reply.clone();
        std::thread::spawn(move || fake_upstream(&upstream, &reply));

        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let config = DnsServerConfig {
                    listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
                    upstreams: vec![upstream_addr],
                    ttl: Duration::from_secs(30),
                    upstream_timeout: Duration::from_secs(2),
                };
                let records = [DnsRecord {
                    name: NAME.into(),
                    ips: vec![ADDRESS.into()],
                }];
                let table = Arc::new(ArcSwap::from_pointee(DnsTable::new("mesh", records)));
                let server = DnsServer::bind(config, table)
                    .await
                    .expect("bind DNS server");
                tx.send(server.local_addrs()[0]).expect("send address");
                let shutdown = tokio_util::sync::CancellationToken::new();
                let _ = server.run(shutdown).await;
            });
        });
        let server = rx.recv().expect("DNS server address");
        let socket = || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client socket");
        Harness {
            server,
            client: socket(),
            prober: socket(),
            upstream_reply,
        }
    })
}

/// Answers each forwarded query with the fuzzer's reply (id patched to the query's, QR set),
/// then with the query echoed back as a NOERROR reply: a reply the server accepts, so the
/// client's query never waits for the upstream timeout.
fn fake_upstream(socket: &UdpSocket, reply: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..n];
        let mut first = reply.lock().map(|r| r.clone()).unwrap_or_default();
        if first.len() >= 3 {
            first[..2].copy_from_slice(&query[..2]);
            first[2] |= 0x80;
            let _ = socket.send_to(&first, from);
        }
        let mut echo = query.to_vec();
        if echo.len() >= 4 {
            echo[2] |= 0x80;
            echo[3] &= 0xf0;
            let _ = socket.send_to(&echo, from);
        }
    }
}

/// The reply to `datagram` (the first datagram back with its id), if one comes within `wait`.
/// Replies still queued from earlier inputs (answers to dropped datagrams come late, if at
/// all) are discarded first and skipped after.
fn ask(socket: &UdpSocket, server: SocketAddr, datagram: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    socket.set_nonblocking(true).expect("non-blocking");
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false).expect("blocking");
    while let Err(e) = socket.send_to(datagram, server) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_micros(1))))
            .expect("read timeout");
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            // libFuzzer's SIGALRM (its `-timeout` check) interrupts a blocked read.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        if buf.get(..2) == datagram.get(..2) {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// A well-formed `A` query for `name` with id `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len))
        .min(rest.len())
        .min(4096);
    let (query, upstream) = rest.split_at(len);
    let harness = harness();
    if let Ok(mut reply) = harness.upstream_reply.lock() {
        reply.clear();
        reply.extend_from_slice(upstream);
    }

    // hickory drops datagrams shorter than a header and well-formed responses; a response
    // whose body does not parse gets a header-only FORMERR; everything else is answered.
    let is_response = query.get(2).is_some_and(|flags| flags & 0x80 != 0);
    let answered = query.len() >= 12 && !is_response;
    let wait = if answered {
        REPLY_WAIT
    } else {
        Duration::from_millis(5)
    };
    match ask(&harness.client, harness.server, query, wait) {
        Some(reply) => {
            assert!(
                query.len() >= 12,
                "reply to a datagram shorter than a header"
            );
            assert_eq!(reply[..2], query[..2], "reply with another id");
            assert!(reply[2] & 0x80 != 0, "reply without QR");
            let message =
                Message::from_vec(&reply).unwrap_or_else(|e| panic!("reply does not parse: {e}"));
            assert_eq!(message.metadata.message_type, MessageType::Response);
            if is_response {
                assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
                assert!(
                    message.answers.is_empty(),
                    "a response reflected with answers"
                );
            }
        }
        None => assert!(!answered, "no reply within {REPLY_WAIT:?}"),
    }

    // Still serving, and the table still answers.
    let probe = ask(
        &harness.prober,
        harness.server,
        &a_query(0x5a5a, NAME),
        REPLY_WAIT,
    )
    .expect("server stopped answering");
    let probe = Message::from_vec(&probe).expect("probe reply parses");
    assert_eq!(probe.metadata.response_code, ResponseCode::NoError);
    let addresses: Vec<IpAddr> = probe
        .answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    assert_eq!(addresses, [IpAddr::V4(ADDRESS)]);
    assert!(probe.queries.iter().all(|q| q.query_type == RecordType::A));
});
