//! The one body type the proxy sends, upstream and downstream: a peer's body passed through
//! as it arrives, bytes the proxy holds itself, or either compressed on its way downstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::access_log::LoggedBody;
use crate::hcm::compress::GzipBody;
use crate::idle::StreamGuard;
use crate::upstream::UpstreamBody;

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
    /// A request body that says when it has ended (a connection manager's request timeout).
    Flagged(Box<(MessageBody<B>, Arc<AtomicBool>)>),
}

impl<B> MessageBody<B> {
    /// This body, setting `ended` (when given) once it has been read to its end.
    pub fn flagging(self, ended: Option<&Arc<AtomicBool>>) -> Self {
        match ended {
            Some(flag) => MessageBody::Flagged(Box::new((self, flag.clone()))),
            None => self,
        }
    }
}

impl<B> MessageBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    /// The flag this body sets once read to its end, made (the body flagging it) when it has
    /// none; `None` for a body that has ended already.
    pub fn end_flag(&mut self) -> Option<Arc<AtomicBool>> {
        if self.is_end_stream() {
            return None;
        }
        if let MessageBody::Flagged(b) = self {
            return Some(b.1.clone());
        }
        let flag = Arc::new(AtomicBool::new(false));
        let body = std::mem::replace(self, MessageBody::Held(Full::default()));
        *self = body.flagging(Some(&flag));
        Some(flag)
    }
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
            MessageBody::Flagged(b) => {
                let res = Pin::new(&mut b.0).poll_frame(cx);
                if matches!(res, Poll::Ready(None)) || b.0.is_end_stream() {
                    b.1.store(true, Ordering::Relaxed);
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MessageBody::Streamed(b) => b.is_end_stream(),
            MessageBody::Held(b) => b.is_end_stream(),
            MessageBody::Gzip(b) => b.is_end_stream(),
            MessageBody::Logged(b) => b.is_end_stream(),
            MessageBody::Flagged(b) => b.0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MessageBody::Streamed(b) => b.size_hint(),
            MessageBody::Held(b) => b.size_hint(),
            MessageBody::Gzip(b) => b.size_hint(),
            MessageBody::Logged(b) => b.size_hint(),
            MessageBody::Flagged(b) => b.0.size_hint(),
        }
    }
}

impl MessageBody<UpstreamBody> {
    /// Keeps `stream` open on its downstream connection until the upstream body this response
    /// carries is dropped (sent whole, or the stream reset); a body the proxy holds itself is
    /// written at once, and the stream ends with this call.
    pub fn hold_stream(&mut self, stream: StreamGuard) {
        match self {
            MessageBody::Streamed(b) => b.hold_stream(stream),
            MessageBody::Gzip(b) => b.inner_mut().hold_stream(stream),
            MessageBody::Logged(b) => b.inner_mut().hold_stream(stream),
            MessageBody::Held(_) | MessageBody::Flagged(_) => {}
        }
    }
}
