//! Circuit breaking: how much of its upstream one cluster may hold at once, counted across
//! every worker, as Envoy's per-cluster thresholds (`bearing_proxy_config::CircuitBreakers`).
//!
//! What a cluster holds is four gauges ([`Occupancy`]), shared by every version of the cluster
//! (kept by name with its metrics, so a reload neither resets nor doubles them). Taking a unit
//! is one atomic add checked against the threshold, giving it back one atomic subtract, both
//! done by guards ([`Held`]) so no path can leak a unit: a connection's guard lives in the
//! connection and is dropped when it closes, a request's for the exchange. No lock is taken
//! unless requests wait for a connection (only then is [`Occupancy::freed`] notified).
//!
//! Beyond a threshold, as Envoy: a request that would need a connection past
//! `max_connections` waits for one to close (`upstream_cx_overflow`), if fewer than
//! `max_pending_requests` already wait, else it gets a 503 (`upstream_rq_pending_overflow`);
//! a request past `max_requests` gets a 503 at once (the same counter); an attempt past
//! `max_retries` is not made (`upstream_rq_retry_overflow`) and the request fails with what
//! the last attempt got. A TCP connection past `max_connections` is closed.

use std::borrow::Borrow;
use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// What one cluster holds now; also its `*_active` / `*_pending` metrics.
#[derive(Debug, Default)]
pub struct Occupancy {
    /// Upstream connections open.
    pub connections: Gauge,
    /// Requests waiting for a connection.
    pub pending: Gauge,
    /// Requests in flight on a connection.
    pub requests: Gauge,
    /// Further attempts of requests under way.
    pub retries: Gauge,
    /// HTTP connection pools alive (a worker's connections to one endpoint).
    pub pools: Gauge,
    /// Notified when a connection closes while requests wait for one.
    freed: Notify,
}

/// Which gauge a [`Held`] unit counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// An open upstream connection.
    Connection,
    /// A request waiting for a connection.
    Pending,
    /// A request in flight.
    Request,
    /// A further attempt of a request.
    Retry,
    /// An HTTP connection pool: a worker's connections to one endpoint.
    ConnectionPool,
}

/// One unit of a cluster's [`Occupancy`], given back when dropped. `O` is `&Occupancy` for a
/// unit held within one task (no reference count touched), `Arc<Occupancy>` for one that
/// outlives it (a pooled connection, a streamed response body).
#[derive(Debug)]
pub struct Held<O: Borrow<Occupancy>> {
    occupancy: O,
    resource: Resource,
}

impl Occupancy {
    fn gauge(&self, resource: Resource) -> &Gauge {
        match resource {
            Resource::Connection => &self.connections,
            Resource::Pending => &self.pending,
            Resource::Request => &self.requests,
            Resource::Retry => &self.retries,
            Resource::ConnectionPool => &self.pools,
        }
    }

    /// Takes one unit of `resource` if fewer than `max` are held; `None` at the threshold.
    pub fn take<O: Borrow<Occupancy>>(
        occupancy: O,
        resource: Resource,
        max: u32,
    ) -> Option<Held<O>> {
        // Compare-and-swap, not increment-then-undo: the gauge is what `/stats` shows and a
        // scrape between the two would see one unit over the threshold.
        let gauge = occupancy.borrow().gauge(resource);
        let below = |n: i64| (n < i64::from(max)).then_some(n + 1);
        gauge
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, below)
            .ok()?;
        Some(Held {
            occupancy,
            resource,
        })
    }

    /// Waits until a connection unit can be taken (below `max`), at most `limit`, as one of
    /// the requests waiting for a connection, or `None` when `max_pending` already wait or
    /// the time is up. `make_room` runs before each wait: it may close an idle connection,
    /// which frees a unit (one kept idle on another worker would otherwise never be used).
    pub async fn wait_for_connection(
        self: &Arc<Self>,
        max: u32,
        max_pending: u32,
        limit: Duration,
        mut make_room: impl FnMut(),
    ) -> Result<Held<Arc<Occupancy>>, Overflow> {
        let _pending =
            Occupancy::take(&**self, Resource::Pending, max_pending).ok_or(Overflow::Pending)?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Pairs with the fence in `Drop`: either this take sees the connection closed,
            // or the closing side sees this request pending and notifies.
            fence(Ordering::SeqCst);
            if let Some(held) = Occupancy::take(self.clone(), Resource::Connection, max) {
                return Ok(held);
            }
            make_room();
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Overflow::Waited(limit));
            }
        }
    }

    /// Whether requests wait for a connection now (one relaxed load): a connection that
    /// finished its request is then closed instead of kept idle, so a waiting request on any
    /// worker can open one.
    pub fn has_waiters(&self) -> bool {
        self.pending.get() > 0
    }
}

impl<O: Borrow<Occupancy>> Drop for Held<O> {
    fn drop(&mut self) {
        let occupancy = self.occupancy.borrow();
        occupancy.gauge(self.resource).dec();
        if self.resource == Resource::Connection {
            fence(Ordering::SeqCst);
            if occupancy.has_waiters() {
                occupancy.freed.notify_one();
            }
        }
    }
}

/// The workers with connections to one endpoint (Envoy's per-worker connection pool of a
/// host, which lives while it has a connection): each worker's count of connections, and
/// the unit of its cluster's `max_connection_pools` it holds while it has one. Touched only
/// when a connection opens or closes, and only for a cluster with that threshold.
#[derive(Debug, Default)]
pub struct PoolMembers(std::sync::Mutex<Vec<WorkerPool>>);

/// A worker's pool of one endpoint: the worker, its connections, the pool's unit.
type WorkerPool = (usize, u32, Held<Arc<Occupancy>>);

/// A connection's place in its worker's pool (held by the connection): the pool's unit is
/// given back when the worker's last connection to the endpoint closes.
#[derive(Debug)]
pub struct PoolMembership {
    members: Arc<PoolMembers>,
    worker: usize,
}

impl PoolMembers {
    /// A new connection of `worker`: its first takes a unit of `occupancy`'s pools below
    /// `max`; `None` when `max` pools are alive and `worker` has none here.
    pub fn join(
        self: &Arc<Self>,
        worker: usize,
        occupancy: &Arc<Occupancy>,
        max: u32,
    ) -> Option<PoolMembership> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match all.iter_mut().find(|(w, ..)| *w == worker) {
            Some((_, count, _)) => *count += 1,
            None => {
                let unit = Occupancy::take(occupancy.clone(), Resource::ConnectionPool, max)?;
                all.push((worker, 1, unit));
            }
        }
        Some(PoolMembership {
            members: self.clone(),
            worker,
        })
    }
}

impl Drop for PoolMembership {
    fn drop(&mut self) {
        let mut all = self.members.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = all.iter().position(|(w, ..)| *w == self.worker) {
            all[i].1 -= 1;
            if all[i].1 == 0 {
                // Its unit is given back.
                all.swap_remove(i);
            }
        }
    }
}

/// A request or connection refused by a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_connections` open (TCP: no waiting).
    Connections,
    /// `max_pending_requests` already wait for a connection.
    Pending,
    /// No connection freed within the time a request may wait for one.
    Waited(Duration),
    /// `max_requests` in flight.
    Requests,
    /// `max_connection_pools` alive: a worker without a connection to the endpoint may not
    /// open one (Envoy answers it as having no healthy upstream).
    ConnectionPools,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overflow::Connections => f.write_str("max_connections upstream connections open"),
            Overflow::Pending => f.write_str("max_pending_requests requests wait for a connection"),
            Overflow::Waited(d) => write!(f, "no upstream connection freed within {d:?}"),
            Overflow::Requests => f.write_str("max_requests requests in flight"),
            Overflow::ConnectionPools => f.write_str("max_connection_pools connection pools alive"),
        }
    }
}

impl std::error::Error for Overflow {}

impl From<Overflow> for io::Error {
    fn from(o: Overflow) -> io::Error {
        io::Error::other(o)
    }
}

impl Overflow {
    /// The overflow `e` carries, if it is one (connects return `io::Error`).
    pub fn of(e: &io::Error) -> Option<Overflow> {
        e.get_ref()?.downcast_ref::<Overflow>().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_refused_at_the_threshold_and_given_back_on_drop() {
        let o = Occupancy::default();
        let first = Occupancy::take(&o, Resource::Request, 2);
        let second = Occupancy::take(&o, Resource::Request, 2);
        assert!(first.is_some() && second.is_some());
        assert!(Occupancy::take(&o, Resource::Request, 2).is_none());
        assert_eq!(o.requests.get(), 2, "a refused unit is not kept");
        drop(first);
        assert!(Occupancy::take(&o, Resource::Request, 2).is_some());
        drop(second);
        assert_eq!(o.requests.get(), 0);
        assert!(Occupancy::take(&o, Resource::Retry, 0).is_none());
    }

    /// A worker's connections to an endpoint share one pool: its first takes the pool's
    /// unit, its last gives it back; another endpoint's or worker's pool past the threshold
    /// is refused.
    #[test]
    fn a_workers_connections_to_an_endpoint_hold_one_pool_unit() {
        let o = Arc::new(Occupancy::default());
        let (a, b) = (
            Arc::new(PoolMembers::default()),
            Arc::new(PoolMembers::default()),
        );
        let first = a.join(0, &o, 1).expect("the first pool");
        let second = a.join(0, &o, 1).expect("the same worker's pool");
        assert_eq!(o.pools.get(), 1);
        assert!(b.join(0, &o, 1).is_none(), "another endpoint's pool");
        assert!(a.join(1, &o, 1).is_none(), "another worker's pool");
        drop(first);
        assert!(
            b.join(0, &o, 1).is_none(),
            "a connection still holds the pool"
        );
        drop(second);
        assert_eq!(o.pools.get(), 0);
        let other = b.join(0, &o, 1);
        assert!(other.is_some() && o.pools.get() == 1);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_connection_that_closes() {
        let o = Arc::new(Occupancy::default());
        let open = Occupancy::take(o.clone(), Resource::Connection, 1);
        assert!(open.is_some());
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move {
                o.wait_for_connection(1, 1, Duration::from_secs(5), || {})
                    .await
                    .map(|_| ())
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(o.pending.get(), 1);
        // A second waiter is over max_pending_requests.
        let refused = o
            .wait_for_connection(1, 1, Duration::from_secs(5), || {})
            .await;
        assert_eq!(refused.err(), Some(Overflow::Pending));
        drop(open);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
        assert_eq!((o.pending.get(), o.connections.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_request_gives_up_after_its_limit_and_may_make_room() {
        let o = Arc::new(Occupancy::default());
        let _open = Occupancy::take(o.clone(), Resource::Connection, 1);
        let mut asked = 0;
        let limit = Duration::from_millis(30);
        let waited = o.wait_for_connection(1, 8, limit, || asked += 1).await;
        assert_eq!(waited.err(), Some(Overflow::Waited(limit)));
        assert_eq!(asked, 1);
        assert_eq!(o.pending.get(), 0);
        let e: io::Error = Overflow::Requests.into();
        assert_eq!(Overflow::of(&e), Some(Overflow::Requests));
        assert_eq!(Overflow::of(&io::Error::other("x")), None);
    }
}
