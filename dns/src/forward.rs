//! Asking one upstream resolver: the client's query bytes, unchanged but for a fresh random
//! id, over UDP (a new socket per query, so the source port is random too) or TCP.
//!
//! Hand-written rather than hickory-server's `ForwardZoneHandler`: that one re-resolves
//! through hickory-resolver (its own cache, questions and EDNS), while relaying the client's
//! own bytes keeps its question, flags (RD, CD, AD) and EDNS options (DO bit, cookies,
//! client subnet) exactly as sent.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_server::proto::op::{Header, Message, MessageType};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The question a reply must echo.
pub(crate) struct Question<'a> {
    pub(crate) name: &'a Name,
    pub(crate) query_type: RecordType,
    pub(crate) query_class: DNSClass,
}

/// One query, ready to be sent to any upstream.
pub(crate) struct Exchange<'a> {
    /// The client's query with our id, preceded by two bytes for the TCP length.
    framed: Vec<u8>,
    id: u16,
    question: Question<'a>,
    /// Size of the buffer a UDP reply is read into: one byte more than the largest reply
    /// read whole, so a datagram that fills it is known to be cut.
    udp_receive: usize,
}

/// UDP replies up to this size are read whole whatever the client's own size, so one larger
/// than the client accepts is still relayed truncated (TC, as many records as fit) rather than
/// failing to parse. Larger ones become a header-only TC reply.
const MIN_UDP_RECEIVE: usize = 4096;

impl<'a> Exchange<'a> {
    /// Prepares `query` (the client's message bytes) for forwarding with a random id.
    /// `None` when the query is too short to carry a header or too long for TCP framing.
    pub(crate) fn new(query: &[u8], question: Question<'a>, udp_buffer: u16) -> Option<Self> {
        let len = u16::try_from(query.len()).ok()?;
        let rest = query.get(2..)?;
        let id = rand::random::<u16>();
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&id.to_be_bytes());
        framed.extend_from_slice(rest);
        Some(Exchange {
            framed,
            id,
            question,
            udp_receive: usize::from(udp_buffer).max(MIN_UDP_RECEIVE) + 1,
        })
    }

    /// Asks `upstream` over UDP. The caller bounds the time.
    pub(crate) async fn udp(&self, upstream: SocketAddr) -> io::Result<Message> {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(&self.framed[2..]).await?;
        let mut buf = vec![0u8; self.udp_receive];
        loop {
            let n = socket.recv(&mut buf).await?;
            let cut = n == buf.len();
            // A stray or spoofed datagram does not end the wait; the caller's timeout does.
            match self.accept(&buf[..n], true, cut) {
                Ok(reply) => return Ok(reply),
                Err(error) => tracing::debug!(%upstream, %error, "DNS reply ignored"),
            }
        }
    }

    /// Asks `upstream` over TCP (one connection per query). The caller bounds the time.
    pub(crate) async fn tcp(&self, upstream: SocketAddr) -> io::Result<Message> {
        let mut stream = TcpStream::connect(upstream).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&self.framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        self.accept(&buf, false, false)
    }

    /// Decodes a reply and checks that it answers our query. `cut`: a UDP datagram larger than
    /// the buffer, of which `bytes` is the start.
    fn accept(&self, bytes: &[u8], udp: bool, cut: bool) -> io::Result<Message> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let header = Header::read(&mut BinDecoder::new(bytes))
            .map_err(|e| invalid(&format!("reply header: {e}")))?;
        if header.id != self.id || header.message_type != MessageType::Response {
            return Err(invalid("not a reply to our query"));
        }
        // Only the header counts when the datagram was larger than we read, or when the
        // upstream set TC and cut it mid-record.
        let header_only = cut || (udp && header.truncation);
        let reply = match Message::from_vec(bytes) {
            Ok(reply) if !cut => reply,
            Err(e) if !header_only => return Err(invalid(&format!("reply: {e}"))),
            // The header alone, with TC, still tells the client to retry over TCP.
            _ => {
                let mut reply = Message::new(header.id, MessageType::Response, header.op_code);
                reply.metadata = header.metadata;
                reply.metadata.truncation = true;
                return Ok(reply);
            }
        };
        // Error replies (FORMERR, NOTIMP) may omit the question; any other must echo ours.
        let echoes = |q: &hickory_server::proto::op::Query| {
            q.name == *self.question.name
                && q.query_type == self.question.query_type
                && q.query_class == self.question.query_class
        };
        match reply.queries.as_slice() {
            [] => Ok(reply),
            [q] if echoes(q) => Ok(reply),
            _ => Err(invalid("reply is for another question")),
        }
    }
}
