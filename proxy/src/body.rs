//! The one body type the proxy sends, upstream and downstream: a peer's body passed through
//! as it arrives, bytes the proxy holds itself, or either compressed on its way downstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::access_log::LoggedBody;
use crate::hcm::compress::GzipBody;

/// The error a body the proxy sends ends with: a peer's (hyper's), or the proxy's own (a
/// stream idle timeout), which makes hyper reset the stream.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A message body: streamed from a peer, or held in memory (a local reply, a mirrored copy).
pub enum MessageBody<B> {
    /// Passed through from the peer as it arrives.
    Streamed(B),
    /// Held by the proxy.
    Held(Full<Bytes>),
    /// A response body compressed to gzip as it streams (a gateway's compression).
    Gzip(Box<GzipBody<MessageBody<B>>>),
    /// A response body whose exchange is logged once it is done (a listener's access log).
    Logged(Box<LoggedBody<MessageBody<B>>>),
}

impl<B> Body for MessageBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            MessageBody::Streamed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            MessageBody::Held(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            MessageBody::Gzip(b) => Pin::new(b.as_mut()).poll_frame(cx),
            MessageBody::Logged(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MessageBody::Streamed(b) => b.is_end_stream(),
            MessageBody::Held(b) => b.is_end_stream(),
            MessageBody::Gzip(b) => b.is_end_stream(),
            MessageBody::Logged(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MessageBody::Streamed(b) => b.size_hint(),
            MessageBody::Held(b) => b.size_hint(),
            MessageBody::Gzip(b) => b.size_hint(),
            MessageBody::Logged(b) => b.size_hint(),
        }
    }
}
