//! Accepting TCP connections and serving HTTP on them, with deadlines, and surviving running
//! out of file descriptors.
//!
//! Issue 24: connections that send nothing were never closed (5,000 slowloris sockets, 10,000
//! idle ones, 1,000 idle after a finished TLS handshake), and at a 1,024 descriptor limit such
//! sockets locked every new client and `/healthz` out. So:
//! - a connection's TLS handshake and every HTTP request head must arrive within
//!   `--request-timeout` (counted from the connection's start, or from the previous response
//!   on a keep-alive connection): slowloris, idle keep-alive and post-handshake idleness all
//!   end there;
//! - when `accept` fails for want of descriptors, the oldest connection still in its HTTP
//!   phase (handshaking, or waiting for a request) is closed to make room: a WebSocket, once
//!   upgraded, is never evicted this way, and a flood of sockets that send nothing cannot
//!   keep a new client out for longer than it takes to close one of them.
//!
//! Both are counted on `/metrics` (`rejected_total{reason="request_timeout"|"evicted"}`,
//! `accept_errors_total`, and the `http_connections` gauge).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// Connections in their HTTP phase (TLS handshake, request heads, plain HTTP), oldest first:
/// the ones [`accept`] may evict.
#[derive(Default)]
pub struct Pending {
    by_age: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
}

/// A connection's place in [`Pending`]; leaves it when dropped (the connection upgraded to a
/// WebSocket or ended).
pub struct Registration<'a> {
    pending: &'a Pending,
    id: u64,
    /// Notified when the connection is evicted.
    pub evicted: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        // Plain map operations: a panic cannot leave it inconsistent.
        self.by_age.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection (the youngest).
    pub fn register(&self) -> Registration<'_> {
        let id = self.next.fetch_add(1, Relaxed);
        let evicted = Arc::new(Notify::new());
        self.lock().insert(id, evicted.clone());
        Registration {
            pending: self,
            id,
            evicted,
        }
    }

    /// Connections in their HTTP phase now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the oldest to close; false if there is none.
    fn evict_oldest(&self) -> bool {
        match self.lock().pop_first() {
            Some((_, n)) => {
                // `notify_one` keeps the permit if the task is not waiting yet.
                n.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Whether `e` means the process (or system) is out of descriptors.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE (24), ENFILE (23); also ENOBUFS/ENOMEM, which need the same relief.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// The next connection. Errors are survived: out of descriptors, the oldest connection in its
/// HTTP phase is evicted to make room; other errors (a connection reset before it was
/// accepted) are retried after a short pause. Logged at most once a second.
pub async fn accept(
    tcp: &TcpListener,
    pending: &Pending,
    metrics: &Metrics,
    last_log: &mut Option<Instant>,
) -> (TcpStream, SocketAddr) {
    loop {
        let e = match tcp.accept().await {
            Ok(x) => return x,
            Err(e) => e,
        };
        metrics.accept_errors.fetch_add(1, Relaxed);
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last_log = Some(Instant::now());
            tracing::warn!(error = %e, pending = pending.len(), "accept failed (logged at most once a second)");
        }
        if out_of_descriptors(&e) && pending.evict_oldest() {
            metrics.reject("evicted");
            // Let the evicted connection's task close its socket before trying again.
            tokio::time::sleep(Duration::from_millis(2)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves HTTP/1.1 on `io` until the connection ends, upgrades (the WebSocket then lives on in
/// its own task), is evicted, or the server stops (then gracefully: a request in progress is
/// answered).
pub async fn serve_http<I>(
    io: I,
    remote: SocketAddr,
    app: Router,
    request_timeout: Duration,
    evicted: &Notify,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics.reject("request_timeout");
                }
                tracing::debug!(%remote, error = %e, "HTTP connection ended");
            }
        }
        () = evicted.notified() => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(request_timeout, conn).await;
        }
    }
}
