//! DNS over TCP (RFC 7766), framed here rather than by hickory-server, so that what a client
//! can hold is bounded: hickory's TCP stream allocates the length a client announces before
//! any of it arrives and keeps a connection for its whole idle timeout, so 8,000 connections
//! each announcing 0xFFFF bytes held 421 MB.
//!
//! - At most [`MAX_CONNECTIONS`] connections at once (all listen addresses together); one
//!   more is closed as soon as it is accepted, and counted.
//! - A connection may wait [`IDLE_TIMEOUT`] for the first byte of a query; once it started, the
//!   rest (length and message) must arrive within [`MESSAGE_TIMEOUT`].
//! - A message is read into a buffer that grows with the bytes received, never past the
//!   announced length: a length alone costs nothing.
//! - Queries on one connection are answered in order, one at a time; the reply must be written
//!   within [`WRITE_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::server::Handler;

/// TCP connections served at once (unbound's `incoming-num-tcp` and CoreDNS's
/// `max_connections` play this part). Each may hold a forwarded query too, under the server's
/// in-flight limit.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Time a connection may wait between queries (from its accept or its last reply).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a query has, from its first length byte, to arrive whole.
pub(crate) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a reply has to be written (the client must read it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First allocation for a message, grown by doubling up to the announced length.
const FIRST_READ: usize = 512;

/// Accepts on `listener` until `shutdown`, serving each connection under `slots`.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: Handler,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::debug!(%error, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            handler.metrics.tcp_refused.inc();
            tracing::debug!(%peer, "DNS TCP connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, &handler).await;
        });
    }
}

/// Answers the queries of one connection until it closes, times out or errs.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, handler: &Handler) {
    let _ = stream.set_nodelay(true);
    loop {
        let message = match read_message(&mut stream, IDLE_TIMEOUT, MESSAGE_TIMEOUT).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%peer, %error, "DNS TCP connection closed");
                return;
            }
        };
        let Some(reply) = answer(message, peer, handler).await else {
            continue;
        };
        let write = async {
            stream.write_all(&reply).await?;
            stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "DNS TCP reply not written");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "DNS TCP reply not read within {WRITE_TIMEOUT:?}");
                return;
            }
        }
    }
}

/// Reads one length-prefixed message. `None` when the connection ends or waits `idle` before
/// a query starts; an error when one starts but does not arrive whole within `whole`.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    idle: Duration,
    whole: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let first = match tokio::time::timeout(idle, stream.read_u8()).await {
        Ok(Ok(byte)) => byte,
        Ok(Err(_)) | Err(_) => return Ok(None),
    };
    let rest = async {
        let second = stream.read_u8().await?;
        let len = usize::from(u16::from_be_bytes([first, second]));
        let mut message = Vec::new();
        while message.len() < len {
            // Grows with what arrives, never past the announced length.
            if message.len() == message.capacity() {
                let target = (message.capacity() * 2).max(FIRST_READ).min(len);
                message.reserve_exact(target - message.len());
            }
            let missing = (len - message.len()) as u64;
            if (&mut *stream).take(missing).read_buf(&mut message).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(message)
    };
    match tokio::time::timeout(whole, rest).await {
        Ok(message) => message.map(Some),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("query not complete within {whole:?}"),
        )),
    }
}

/// The framed reply to `message`, as hickory-server would give it: nothing for a message
/// shorter than a header or for a response (no reflection), FORMERR for one whose header
/// parses but body does not, else the handler's answer.
async fn answer(message: Vec<u8>, peer: SocketAddr, handler: &Handler) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(&message)).ok()?;
    let request = match Request::from_bytes(message, peer, Protocol::Tcp) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%peer, %error, "DNS TCP query malformed: FORMERR");
            let mut reply = Message::new(header.id, MessageType::Response, header.op_code);
            reply.metadata.response_code = ResponseCode::FormErr;
            return frame(reply.to_vec().ok()?);
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let slot = Reply::default();
    handler
        .handle_request::<_, TokioTime>(&request, slot.clone())
        .await;
    let encoded = slot.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    frame(encoded)
}

/// Prefixes `message` with its two-byte length; `None` when it does not fit.
fn frame(mut message: Vec<u8>) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    message.splice(0..0, len.to_be_bytes());
    Some(message)
}

/// Where the handler's response lands, encoded, for the connection to write.
#[derive(Clone, Default)]
struct Reply(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(FIRST_READ);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const SHORT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_message_is_read_whole_into_a_buffer_sized_by_what_arrived() {
        let mut wire: &[u8] = &[0, 5, 1, 2, 3, 4, 5, 0, 1];
        let message = read_message(&mut wire, SHORT, SHORT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message, [1, 2, 3, 4, 5]);
        assert_eq!(message.capacity(), 5, "never past the announced length");
        // A message cut short is an error, not a partial query.
        assert!(read_message(&mut wire, SHORT, SHORT).await.is_err());
        // A clean end between queries is the end of the connection.
        let mut empty: &[u8] = &[];
        assert!(read_message(&mut empty, SHORT, SHORT)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn an_announced_length_alone_costs_little_and_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0xff, 0xff, 1, 2]).await.unwrap();
        let started = Instant::now();
        let read = read_message(&mut server, Duration::from_secs(10), SHORT).await;
        assert!(read.is_err(), "an incomplete message fails");
        let waited = started.elapsed();
        assert!(waited >= SHORT && waited < SHORT * 5, "{waited:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_ends_after_the_idle_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let started = Instant::now();
        let read = read_message(&mut server, SHORT, Duration::from_secs(10)).await;
        assert!(read.unwrap().is_none());
        let waited = started.elapsed();
        assert!(waited >= SHORT && waited < SHORT * 5, "{waited:?}");
    }

    #[test]
    fn frames_carry_the_length() {
        assert_eq!(frame(vec![7, 8, 9]), Some(vec![0, 3, 7, 8, 9]));
        assert_eq!(frame(vec![0; 70_000]), None);
    }
}
