//! File access logs (`Listener::access_logs`, kuma-cp's MeshAccessLog and TrafficLog): a line
//! per HTTP request or TCP connection, rendered on the worker and written by a thread of its
//! own, so that a slow disk or a blocked pipe never stalls a worker.
//!
//! A worker renders the line into a thread-local buffer (no allocation once warm) and appends
//! it, under a short lock, to its file's pending bytes: no system call on the worker, but the
//! one that wakes an idle writer at the first line of a batch. The file's writer thread takes
//! the pending bytes whole once a second (or as soon as 64 KiB are pending: Envoy flushes at
//! 64 KiB too, every 10 s by default) and writes them with one `write_all`. Past 1 MiB pending
//! (the writer cannot keep up or the file cannot be written), lines are dropped and counted
//! (`bearing_access_log_dropped_total{path}`); a failed write drops its batch (counted),
//! logs an error naming the path once, and the file is opened again for the next batch.
//!
//! One writer per path, shared by every listener logging there, as long as a listener uses
//! it: the last listener's runtime dropped, the writer flushes what is pending and ends. A
//! listener without access logs has no [`ListenerLog`] and pays nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bearing_proxy_config::{AccessLog, Entry, HeaderSource, LogFilter, LogFormat, ResponseFlags};
use prometheus_client::metrics::counter::Counter;

use crate::body::BodyError;
use crate::stats::Stats;
use crate::upstream::{MaxStreamDurationReached, UpstreamError};

/// How long a line may wait before it is written.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Pending bytes that wake the writer at once.
const FLUSH_BYTES: usize = 64 * 1024;
/// Pending bytes past which lines are dropped.
const MAX_PENDING: usize = 1024 * 1024;

thread_local! {
    /// The line being rendered on this worker.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The writers of the files access logs go to, by path: shared by the listeners of every
/// applied config.
#[derive(Default)]
pub struct LogFiles {
    open: Mutex<HashMap<String, Weak<LogFile>>>,
}

impl LogFiles {
    /// The runtime of `logs` (a listener's); `None` when it has none.
    pub(crate) fn listener(&self, logs: &[AccessLog], stats: &Stats) -> Option<Arc<ListenerLog>> {
        if logs.is_empty() {
            return None;
        }
        let sinks = logs
            .iter()
            .map(|log| {
                let file = self.file(&log.path, stats);
                (log.format.clone(), file, log.filter.clone())
            })
            .collect();
        Some(Arc::new(ListenerLog { sinks }))
    }

    /// The writer of `path` (started if no one uses it yet), shared by access logs and
    /// health check event logs.
    pub(crate) fn file(&self, path: &str, stats: &Stats) -> Arc<LogFile> {
        let mut open = lock(&self.open);
        open.retain(|_, file| file.strong_count() > 0);
        match open.get(path).and_then(Weak::upgrade) {
            Some(file) => file,
            None => {
                let file = LogFile::start(path, stats.access_log_dropped(path));
                open.insert(path.to_string(), Arc::downgrade(&file));
                file
            }
        }
    }
}

/// Where a TCP connection is logged: its listener's logs, and the downstream connection's
/// local address.
pub(crate) type ConnectionLog<'a> = (&'a ListenerLog, SocketAddr);

/// A listener's access logs: each format with the file its lines go to.
pub(crate) struct ListenerLog {
    sinks: Vec<(LogFormat, Arc<LogFile>, Option<LogFilter>)>,
}

impl ListenerLog {
    /// Renders `entry` by each format whose filter admits it and hands the lines to their
    /// writers.
    pub(crate) fn log(&self, entry: &Entry<'_>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            for (format, file, filter) in &self.sinks {
                if filter.as_ref().is_some_and(|f| !f.admits(entry.route_kri)) {
                    continue;
                }
                line.clear();
                format.render(entry, &mut line);
                file.append(&line);
            }
        });
    }
}

/// One file and its writer thread.
pub(crate) struct LogFile {
    shared: Arc<Shared>,
}

/// What workers and the writer share.
struct Shared {
    path: String,
    state: Mutex<Pending>,
    wake: Condvar,
    dropped: Counter,
}

/// The bytes waiting for the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines in `bytes` (counted as dropped if their write fails).
    lines: u64,
    /// The writer waits on the condition variable (a worker wakes it when it should write).
    idle: bool,
    /// No listener uses the file any more: write what is pending and end.
    closed: bool,
}

impl LogFile {
    /// Starts the writer of `path`; lines that cannot be written are counted in `dropped`.
    fn start(path: &str, dropped: Counter) -> Arc<LogFile> {
        let shared = Arc::new(Shared {
            path: path.to_string(),
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped,
        });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("bearing-access-log".into())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            // Lines then pile up to the limit and are counted as dropped.
            tracing::error!(path, "access log writer not started: {e}");
        }
        Arc::new(LogFile { shared })
    }

    /// Appends one rendered line (dropped and counted when too much is pending).
    pub(crate) fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut pending = lock(&shared.state);
        if pending.bytes.len() + line.len() > MAX_PENDING {
            drop(pending);
            shared.dropped.inc();
            return;
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        let wake = pending.idle && (was_empty || pending.bytes.len() >= FLUSH_BYTES);
        if wake {
            pending.idle = false;
            drop(pending);
            shared.wake.notify_one();
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    /// The writer: waits for lines, lets a batch gather for up to [`FLUSH_INTERVAL`], writes
    /// it; ends once closed and written out.
    fn run(&self) {
        let mut file: Option<File> = None;
        let mut failing = false;
        let mut batch = Vec::new();
        loop {
            let lines = {
                let mut pending = lock(&self.state);
                while pending.bytes.is_empty() {
                    if pending.closed {
                        return;
                    }
                    pending.idle = true;
                    pending = wait(&self.wake, pending, None);
                }
                if pending.bytes.len() < FLUSH_BYTES && !pending.closed {
                    pending.idle = true;
                    pending = wait(&self.wake, pending, Some(FLUSH_INTERVAL));
                    pending.idle = false;
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                std::mem::take(&mut pending.lines)
            };
            match self.write(&mut file, &batch) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(path = %self.path, "access log written again");
                }
                Ok(()) => {}
                Err(e) => {
                    self.dropped.inc_by(lines);
                    file = None;
                    if !failing {
                        failing = true;
                        tracing::error!(path = %self.path, "access log not written ({e}): lines are dropped until the file can be opened and written again");
                    }
                }
            }
            batch.clear();
            if batch.capacity() > MAX_PENDING {
                batch = Vec::new();
            }
        }
    }

    /// Writes `bytes` to the file, opened (for appending, created if absent) when it is not.
    fn write(&self, file: &mut Option<File>, bytes: &[u8]) -> std::io::Result<()> {
        let open = match file {
            Some(f) => f,
            None => file.insert(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&self.path)?,
            ),
        };
        open.write_all(bytes)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `wake` (at most `limit`), whatever a panicking holder left.
fn wait<'a>(
    wake: &Condvar,
    guard: MutexGuard<'a, Pending>,
    limit: Option<Duration>,
) -> MutexGuard<'a, Pending> {
    match limit {
        None => wake.wait(guard).unwrap_or_else(|p| p.into_inner()),
        Some(limit) => match wake.wait_timeout(guard, limit) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        },
    }
}

/// When a logged request or connection began: the wall clock for `START_TIME`, the
/// monotonic one for `DURATION`. Read only for listeners that log.
#[derive(Clone, Copy)]
pub(crate) struct Began {
    wall: SystemTime,
    at: Instant,
}

impl Began {
    /// Now.
    pub(crate) fn now() -> Began {
        Began {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }

    /// The wall-clock start and the time since.
    pub(crate) fn times(&self) -> (SystemTime, Duration) {
        (self.wall, self.at.elapsed())
    }
}

/// Envoy's response flags for a request or connection that failed with `failure`, and the
/// endpoint it was going to when one was chosen.
pub(crate) fn failure_flags(failure: &UpstreamError) -> (ResponseFlags, Option<SocketAddr>) {
    match failure {
        UpstreamError::NoEndpoints => (ResponseFlags::NO_HEALTHY_UPSTREAM, None),
        UpstreamError::ConnectFailed(a, _) => {
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Some(*a))
        }
        UpstreamError::Request(a, _) => (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, Some(*a)),
        UpstreamError::InvalidResponse(a, _) => (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, Some(*a)),
        UpstreamError::Timeout(a) => (ResponseFlags::UPSTREAM_TIMEOUT, Some(*a)),
        UpstreamError::MaxStreamDuration(a) => {
            (ResponseFlags::UPSTREAM_MAX_STREAM_DURATION, Some(*a))
        }
        UpstreamError::Overflow(_) => (ResponseFlags::UPSTREAM_OVERFLOW, None),
        UpstreamError::RequestBody(_) => (ResponseFlags::default(), None),
    }
}

/// What a request served by hyper gives its log line once its response body is done: taken
/// when the response head is ready, logged when the body is dropped.
pub(crate) struct HyperExchange {
    /// The listener's logs.
    pub log: Arc<ListenerLog>,
    /// When the request came.
    pub began: Began,
    /// Its head as forwarded (method, URI, version, headers).
    pub request: http::request::Parts,
    /// The response's status and headers as sent.
    pub status: u16,
    pub response: http::HeaderMap,
    /// The request's body bytes (its `content-length`: hyper streams the body).
    pub received: u64,
    /// The endpoint, cluster and flags of the outcome.
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<String>,
    pub flags: ResponseFlags,
    /// The `route_kri` of its route, for access log filters.
    pub route_kri: Option<String>,
    /// The downstream connection's addresses.
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// A response body that counts what it gives and logs its exchange when dropped (flagged
/// `DC` when it is dropped before its end: the client went away).
pub struct LoggedBody<B> {
    inner: B,
    sent: u64,
    /// Read to its end, or ended by the proxy (not the client's doing).
    ended: bool,
    exchange: Box<HyperExchange>,
}

impl<B: http_body::Body> LoggedBody<B> {
    /// `inner`, logged as `exchange` once done.
    pub(crate) fn new(inner: B, exchange: Box<HyperExchange>) -> Self {
        LoggedBody {
            ended: inner.is_end_stream(),
            inner,
            sent: 0,
            exchange,
        }
    }
}

impl<B> LoggedBody<B> {
    /// The body being logged.
    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> http_body::Body for LoggedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = BodyError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.sent += n;
                self.ended = self.inner.is_end_stream();
            }
            // The proxy reset the stream (Envoy's `UMSDR`), not the client.
            std::task::Poll::Ready(Some(Err(e))) if e.is::<MaxStreamDurationReached>() => {
                let flag = ResponseFlags::UPSTREAM_MAX_STREAM_DURATION;
                self.exchange.flags.insert(flag);
                self.ended = true;
            }
            std::task::Poll::Ready(Some(Err(_))) => {
                let flag = ResponseFlags::UPSTREAM_CONNECTION_TERMINATION;
                self.exchange.flags.insert(flag);
            }
            std::task::Poll::Ready(None) => self.ended = true,
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        let x = &mut *self.exchange;
        if !self.ended {
            x.flags.insert(ResponseFlags::DOWNSTREAM_TERMINATION);
        }
        let (start, duration) = x.began.times();
        let protocol = match x.request.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        };
        x.log.log(&Entry {
            route_kri: x.route_kri.as_deref(),
            start,
            duration,
            protocol: Some(protocol),
            response_code: x.status,
            flags: x.flags,
            bytes_received: x.received,
            bytes_sent: self.sent,
            upstream_host: x.upstream,
            upstream_cluster: x.cluster.as_deref(),
            downstream_remote: x.peer,
            downstream_local: x.local,
            request: &RequestParts(&x.request),
            response: &ResponseHeaders(&x.response),
        });
    }
}

/// A head written by `bearing_http1` (request or response) read as a log line's headers: the
/// request line gives `:method` and `:path`, `host` gives `:authority`.
pub(crate) struct WrittenHead<'a>(pub &'a [u8]);

impl HeaderSource for WrittenHead<'_> {
    fn fields<'s>(&'s self, f: &mut dyn FnMut(&'s [u8], &'s [u8])) -> bool {
        let Some((_, fields)) = bearing_http1::written_head(self.0) else {
            return false;
        };
        for (name, value) in fields {
            f(name, value);
        }
        true
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        let (line, mut fields) = bearing_http1::written_head(self.0)?;
        let mut parts = line.split(|b| *b == b' ');
        match name {
            ":method" => parts.next(),
            ":path" => parts.nth(1),
            ":scheme" => None,
            ":authority" => fields
                .find(|(n, _)| n.eq_ignore_ascii_case(b"host"))
                .map(|f| f.1),
            _ => fields
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|f| f.1),
        }
    }
}

/// A request's parts as hyper read them.
pub(crate) struct RequestParts<'a>(pub &'a http::request::Parts);

impl HeaderSource for RequestParts<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        let p = self.0;
        match name {
            ":method" => Some(p.method.as_str().as_bytes()),
            ":path" => p.uri.path_and_query().map(|q| q.as_str().as_bytes()),
            ":scheme" => p.uri.scheme_str().map(str::as_bytes),
            ":authority" => p
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| p.headers.get(http::header::HOST).map(|v| v.as_bytes())),
            _ => p.headers.get(name).map(|v| v.as_bytes()),
        }
    }
}

/// A response's headers as hyper holds them.
pub(crate) struct ResponseHeaders<'a>(pub &'a http::HeaderMap);

impl HeaderSource for ResponseHeaders<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|v| v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bearing_proxy_config::NoHeaders;

    fn entry<'a>(request: &'a dyn HeaderSource) -> Entry<'a> {
        Entry {
            route_kri: None,
            start: SystemTime::now(),
            duration: Duration::from_millis(3),
            protocol: Some("HTTP/1.1"),
            response_code: 200,
            flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 2,
            upstream_host: None,
            upstream_cluster: None,
            downstream_remote: "127.0.0.1:1".parse().unwrap(),
            downstream_local: "127.0.0.1:2".parse().unwrap(),
            request,
            response: &NoHeaders,
        }
    }

    #[test]
    fn written_heads_give_pseudo_headers_and_fields() {
        let head = b"GET /a?b HTTP/1.1\r\nHost: web\r\nX-Test: one\r\nx-test: two\r\n\r\nbody";
        let h = WrittenHead(head);
        assert_eq!(h.header(":method"), Some(&b"GET"[..]));
        assert_eq!(h.header(":path"), Some(&b"/a?b"[..]));
        assert_eq!(h.header(":authority"), Some(&b"web"[..]));
        assert_eq!(h.header("x-test"), Some(&b"one"[..]));
        assert_eq!(h.header("x-none"), None);
    }

    #[test]
    fn lines_reach_the_file_from_a_writer_shared_by_path() {
        let dir = std::env::temp_dir().join(format!("bearing-alog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("access.log").to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&path);
        let stats = Stats::new();
        let files = LogFiles::default();
        let log = |format: &str| AccessLog {
            path: path.clone(),
            format: LogFormat::text(format, false).unwrap(),
            filter: None,
        };
        let a = files.listener(&[log("a %REQ(:PATH)%\n")], &stats).unwrap();
        let b = files
            .listener(&[log("b %RESPONSE_CODE%\n")], &stats)
            .unwrap();
        assert!(Arc::ptr_eq(&a.sinks[0].1, &b.sinks[0].1));
        assert!(files.listener(&[], &stats).is_none());
        let head = WrittenHead(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        a.log(&entry(&head));
        b.log(&entry(&head));
        // Dropping the last user flushes what is pending and ends the writer.
        drop((a, b));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut text = String::new();
        while std::time::Instant::now() < deadline {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(text, "a /x\nb 200\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them() {
        let shared = Arc::new(Shared {
            path: "/nonexistent/dir/access.log".into(),
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: Counter::default(),
        });
        // No writer: the queue only fills.
        let file = LogFile {
            shared: shared.clone(),
        };
        let line = vec![b'x'; 1000];
        for _ in 0..1100 {
            file.append(&line);
        }
        assert_eq!(lock(&shared.state).lines, 1048);
        assert_eq!(shared.dropped.get(), 52);
        // A write that fails drops its batch and counts it.
        let mut none = None;
        assert!(shared.write(&mut none, b"x\n").is_err());
    }
}
