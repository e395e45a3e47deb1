//! A gRPC origin for the e2e tests: on one port (HTTP/1.1, or HTTP/2 with prior knowledge)
//! it answers `grpc.health.v1.Health/Check` with `SERVING`, or `NOT_SERVING` while the file
//! `<dir>/not-serving` exists, recording each call's `:authority` and service in
//! `<dir>/last-check`; any other request is answered 200 with `<port>\n`.
//!
//! `grpc-health-origin --port <port> --dir <dir>`

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

#[derive(Parser)]
struct Args {
    /// The port listened on (all IPv4 addresses).
    #[arg(long)]
    port: u16,
    /// Where the flag and record files are.
    #[arg(long)]
    dir: PathBuf,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

type Body = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn body(frames: Vec<Frame<Bytes>>) -> Body {
    StreamBody::new(tokio_stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ))
}

async fn serve(args: Arc<Args>, request: Request<Incoming>) -> Result<Response<Body>> {
    if request.uri().path() != "/grpc.health.v1.Health/Check" {
        let text = format!("{}\n", args.port);
        return Ok(Response::new(body(vec![Frame::data(Bytes::from(text))])));
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            let host = request.headers().get(hyper::header::HOST)?;
            host.to_str().ok().map(str::to_string)
        })
        .unwrap_or_default();
    let mut bytes = request.into_body().collect().await?.to_bytes();
    anyhow::ensure!(bytes.remaining() >= 5, "a short gRPC frame");
    let _flags = bytes.get_u8();
    let length = bytes.get_u32() as usize;
    let message = HealthCheckRequest::decode(bytes.split_to(length.min(bytes.remaining())))?;
    std::fs::write(
        args.dir.join("last-check"),
        format!("{authority} {}\n", message.service),
    )?;
    let status = match args.dir.join("not-serving").exists() {
        true => 2,
        false => 1,
    };
    let reply = HealthCheckResponse { status };
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(reply.encoded_len() as u32);
    reply.encode_raw(&mut frame);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let mut response = Response::new(body(vec![
        Frame::data(frame.freeze()),
        Frame::trailers(trailers),
    ]));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .with_context(|| format!("binding port {}", args.port))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let args = args.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| serve(args.clone(), r));
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                eprintln!("connection: {e}");
            }
        });
    }
}
