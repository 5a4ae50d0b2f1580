//! HTTP and WebSocket front: routes, static files, one task per WebSocket connection, graceful
//! shutdown.
//!
//! Each connection task owns its socket and a bounded queue of outgoing messages. Other
//! connections only ever `try_send` into that queue ([`ConnHandle::send`]); when it is full the
//! connection is closed (1008) rather than buffered further, so memory stays bounded whatever
//! clients do. Replies to the connection itself go through the same queue, which keeps the
//! per-connection order of messages and lets the task read only after it has written.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket, WebSocketUpgrade,
};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::{Config, FullQueue};
use crate::metrics::{Kind, Metrics};
use crate::protocol::{self, Request as Msg};
use crate::tls::{TlsListener, TlsReloader};
use crate::tracker::{ConnHandle, Out, SendOutcome, Tracker};

/// Read buffer per connection. tungstenite's default is 128 KiB, allocated up front; tracker
/// messages are a few KiB at most, and idle connections must stay small (goal: < 8 KiB each).
const READ_BUFFER: usize = 2048;

/// Messages written per flush when a queue has several waiting.
const WRITE_BATCH: usize = 32;

/// Bytes of encoded frames tungstenite collects before it writes to the socket; a batch is
/// then flushed at once. With 0 (the earlier setting) every message cost its own `write`
/// syscall (and, with TLS, its own record) even inside a batch. The buffer grows only on
/// connections that get batches, so idle connections do not pay for it.
const WRITE_BUFFER: usize = 16 * 1024;

/// Shared server state.
pub struct AppState {
    /// Configuration as started.
    pub config: Config,
    /// Counters served on `/metrics`.
    pub metrics: Metrics,
    tracker: Mutex<Tracker>,
    static_dir: PathBuf,
    next_conn: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// The tracker; a poisoned lock is recovered (the state is still consistent: no operation
    /// panics halfway by design, and a panic elsewhere must not take the server down).
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(swarms, peers)` right now.
    pub fn sizes(&self) -> (usize, usize) {
        let t = self.tracker();
        (t.swarm_count(), t.peer_count())
    }
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Other socket errors.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A started server.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared state (metrics, tracker sizes).
    pub state: Arc<AppState>,
    /// With `--tls-cert`: reloads the certificate (main calls it on SIGHUP).
    pub tls: Option<Arc<TlsReloader>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Stops accepting, asks every WebSocket to close (1001) and waits up to the configured
    /// grace period for them to go.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    // Certificate problems are start-up errors, reported before anything listens.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(TlsReloader::new(c.clone(), k.clone())?),
        _ => None,
    };
    let listener = listen(config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let grace = config.grace();
    let ttl = config.idle();
    let state = Arc::new(AppState {
        static_dir: config.static_dir(),
        tracker: Mutex::new(Tracker::new(config.limits())),
        config,
        metrics: Metrics::default(),
        next_conn: AtomicU64::new(1),
        shutdown: stop_rx.clone(),
    });
    let app = router(state.clone());
    let st = state.clone();
    let (tls_listener, plain) = match &tls {
        Some(t) => (Some(TlsListener::new(listener, t.clone())?), None),
        None => (None, Some(listener)),
    };
    let task = tokio::spawn(async move {
        let sweeper = tokio::spawn(sweep(st.clone(), ttl));
        let stop_http = stop_rx.clone();
        let served = match (tls_listener, plain) {
            (Some(l), _) => serve_on(l, app, stop_http).await,
            (None, Some(l)) => {
                // Small messages must not wait for Nagle + delayed ACK (40 ms).
                let l = l.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                serve_on(l, app, stop_http).await
            }
            (None, None) => Ok(()),
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "server stopped with an error");
        }
        sweeper.abort();
        // WebSocket tasks saw the same signal; wait for them to close.
        let deadline = Instant::now() + grace;
        while st.metrics.connections.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    Ok(Running {
        addr,
        state,
        tls,
        stop,
        task,
    })
}

async fn serve_on<L>(
    listener: L,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

/// Accept queue length. tokio's `TcpListener::bind` listens with a backlog of 128; a burst of
/// reconnecting clients (a restart, a popular stream starting) overflows that and every dropped
/// SYN costs its client a 1 s retransmit. The kernel caps this at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Removes peers that stopped re-announcing, every quarter TTL.
async fn sweep(state: Arc<AppState>, ttl: Duration) {
    let mut tick = tokio::time::interval((ttl / 4).max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        let n = state.tracker().expire(Instant::now(), ttl);
        if n > 0 {
            tracing::debug!(expired = n, "peers expired");
        }
    }
}

/// All routes.
pub fn router(state: Arc<AppState>) -> Router {
    let files = ServeDir::new(&state.static_dir).append_index_html_on_directories(true);
    Router::new()
        .route("/", get(root))
        .route("/announce", get(announce))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback_service(files)
        .layer(middleware::from_fn(module_mime))
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        // The embed is loaded by other sites' pages: `<script type="module">`, the wasm module
        // and its glue are fetched cross-origin, which browsers allow only with CORS. Nothing
        // here is credentialed or private, so any origin may read it.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ))
        .with_state(state)
}

/// `.mjs` is JavaScript; mime_guess says `application/javascript`, browsers want
/// `text/javascript` for module scripts (and it is the registered type since RFC 9239).
async fn module_mime(req: Request, next: Next) -> Response {
    let is_js = {
        let p = req.uri().path();
        p.ends_with(".mjs") || p.ends_with(".js")
    };
    let mut res = next.run(req).await;
    if is_js && res.status().is_success() {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
    }
    res
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (swarms, peers) = state.sizes();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(swarms, peers),
    )
        .into_response()
}

/// `/`: a WebSocket upgrade (WebTorrent clients use the tracker URL as given), else the index.
async fn root(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(state, &headers, ws),
        Err(_) => match tokio::fs::read_to_string(state.static_dir.join("index.html")).await {
            Ok(page) => Html(page).into_response(),
            Err(_) => Html(
                "<!doctype html><title>swarmcast</title><p>swarmcast signaling server. \
                 Try the <a href=\"demo.html\">demo</a>.</p>\n",
            )
            .into_response(),
        },
    }
}

/// `/announce`: WebSocket only.
async fn announce(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(state, &headers, ws),
        Err(_) => (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this is a WebSocket tracker endpoint\n",
        )
            .into_response(),
    }
}

fn upgrade(state: Arc<AppState>, headers: &HeaderMap, ws: WebSocketUpgrade) -> Response {
    let cfg = &state.config;
    if !cfg.allowed_origins.is_empty() {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| cfg.allowed_origins.iter().any(|a| a == o));
            if !ok {
                state.metrics.reject("origin");
                return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
            }
        }
    }
    if state.metrics.connections.load(Relaxed) >= cfg.max_connections as u64 {
        state.metrics.reject("too_many_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    }
    let max = cfg.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER.min(max.max(64)))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 * max.max(64 * 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(socket, state))
}

/// A token bucket: `rate` per second, up to `burst`.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How a connection ended, for the close frame.
enum End {
    /// The client closed or the socket failed: nothing more to send.
    Quiet,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

async fn connection(socket: WebSocket, state: Arc<AppState>) {
    let id = state.next_conn.fetch_add(1, Relaxed);
    let (tx, rx) = mpsc::channel(state.config.send_queue.max(1));
    let handle = Arc::new(
        ConnHandle::new(id, tx).drop_when_full(state.config.on_full_queue == FullQueue::Drop),
    );
    state.tracker().add_conn(handle.clone());
    state.metrics.connections.fetch_add(1, Relaxed);
    state.metrics.connections_total.fetch_add(1, Relaxed);
    // Boxed so the spawned task's inline future stays small; the loop's state lives on the heap
    // once, sized by what it holds.
    Box::pin(drive(socket, &state, &handle, rx)).await;
    state.tracker().remove_conn(id);
    state.metrics.connections.fetch_sub(1, Relaxed);
}

async fn drive(
    mut ws: WebSocket,
    state: &Arc<AppState>,
    handle: &Arc<ConnHandle>,
    mut rx: mpsc::Receiver<Box<Out>>,
) {
    let cfg = &state.config;
    let mut shutdown = state.shutdown.clone();
    let idle = cfg.idle();
    let send_timeout = cfg.send_timeout();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.ping(), cfg.ping());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_msg = Instant::now();
    let mut bucket = Bucket {
        tokens: cfg.rate_burst.max(1.0),
        last: Instant::now(),
    };
    let mut violations = 0u32;
    // Both wake-up sources are registered once for the connection's life, not re-created (and
    // re-registered under their locks) on every pass of the loop.
    let shut = shutdown.changed();
    tokio::pin!(shut);
    let killed = handle.kill.notified();
    tokio::pin!(killed);
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut shut => break End::Close(1001, "server shutting down"),
            _ = &mut killed => {
                state.metrics.reject("slow_reader");
                break End::Quiet;
            }
            out = rx.recv() => {
                let Some(first) = out else { break End::Quiet };
                // Boxed: one allocation per batch (against a few µs of syscalls) keeps ~350 bytes
                // of write state out of every idle connection's task (goal: < 8 KiB each).
                match Box::pin(write_bounded(&mut ws, &mut rx, first, &state.metrics, send_timeout)).await {
                    Ok(()) => {}
                    Err(WriteFail::Io) => break End::Quiet,
                    Err(WriteFail::Timeout) => {
                        // The socket did not take our writes for `send_timeout`: a slow reader.
                        state.metrics.reject("slow_reader");
                        break End::Quiet;
                    }
                }
            }
            msg = ws.recv() => {
                let data = match msg {
                    None | Some(Ok(Message::Close(_))) => break End::Quiet,
                    Some(Err(e)) => {
                        if is_capacity(&e) {
                            state.metrics.reject("frame_too_large");
                            break End::Close(1009, "message too big");
                        }
                        break End::Quiet;
                    }
                    Some(Ok(Message::Text(t))) => Frame::Text(t),
                    Some(Ok(Message::Binary(b))) => Frame::Binary(b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                };
                last_msg = Instant::now();
                if !bucket.take(last_msg, cfg.rate, cfg.rate_burst) {
                    state.metrics.reject("rate_limited");
                    violations += 1;
                    if f64::from(violations) > cfg.rate_burst.max(1.0) {
                        break End::Close(1008, "rate limit exceeded");
                    }
                    reply(state, handle, protocol::encode_failure("rate limit exceeded"), Kind::Failure);
                    continue;
                }
                let parsed = match &data {
                    Frame::Text(t) => protocol::parse_str(t.as_str()),
                    Frame::Binary(b) => protocol::parse(b),
                };
                handle_message(state, handle, parsed, last_msg);
            }
            _ = tick.tick() => {
                if last_msg.elapsed() >= idle {
                    state.metrics.reject("idle_timeout");
                    break End::Close(1000, "idle timeout");
                }
                // Boxed (here and for the close frame): rare paths, and a timer inline would
                // grow every connection's task state.
                if !matches!(Box::pin(tokio::time::timeout(send_timeout, ws.send(Message::Ping(Default::default())))).await, Ok(Ok(()))) {
                    break End::Quiet;
                }
            }
        }
    };
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::Close(Some(frame))),
        ))
        .await;
    }
}

/// Whether a read failed because the message or frame exceeded the configured maximum.
fn is_capacity(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        src = s.source();
    }
    false
}

/// Why writing a batch failed.
enum WriteFail {
    /// The socket failed or closed.
    Io,
    /// The socket took nothing for `send_timeout`.
    Timeout,
}

/// [`write_batch`] bounded by `limit`. Nearly every batch goes straight into the socket
/// buffer, so the timer is armed only when the first poll cannot finish (arming one per batch
/// cost a timer-wheel insert and removal per message under load).
async fn write_bounded(
    ws: &mut WebSocket,
    rx: &mut mpsc::Receiver<Box<Out>>,
    first: Box<Out>,
    metrics: &Metrics,
    limit: Duration,
) -> Result<(), WriteFail> {
    let fut = write_batch(ws, rx, first, metrics);
    tokio::pin!(fut);
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    let done = match first_poll {
        Poll::Ready(r) => r,
        Poll::Pending => {
            // Boxed: a timer entry is large, and every connection's task state would carry
            // its size even though only a blocked write needs one.
            let deadline = Box::pin(tokio::time::sleep(limit));
            tokio::select! {
                r = &mut fut => r,
                _ = deadline => return Err(WriteFail::Timeout),
            }
        }
    };
    done.map_err(|_| WriteFail::Io)
}

async fn write_batch(
    ws: &mut WebSocket,
    rx: &mut mpsc::Receiver<Box<Out>>,
    first: Box<Out>,
    metrics: &Metrics,
) -> Result<(), axum::Error> {
    // Relay ages at the start of the batch in µs (u32::MAX: not relayed); the flush time is
    // added after. Kept small: this array lives in every connection task's state.
    const NONE: u32 = u32::MAX;
    let start = Instant::now();
    let mut ages = [NONE; WRITE_BATCH];
    let mut n = 0;
    let mut next = Some(first);
    while let Some(out) = next.take() {
        if let Some(t) = out.relayed_at {
            let us = start.saturating_duration_since(t).as_micros();
            ages[n] = u32::try_from(us).unwrap_or(NONE - 1).min(NONE - 1);
        }
        metrics.outgoing(out.kind, 1);
        ws.feed(Message::Text(out.text.into())).await?;
        n += 1;
        if n < WRITE_BATCH {
            next = rx.try_recv().ok();
        }
    }
    ws.flush().await?;
    let flush = start.elapsed();
    for &age in ages[..n].iter().filter(|&&a| a != NONE) {
        metrics.relay_latency(Duration::from_micros(u64::from(age)) + flush);
    }
    Ok(())
}

fn reply(state: &AppState, handle: &ConnHandle, text: String, kind: Kind) {
    deliver(
        state,
        handle,
        Out {
            text,
            kind,
            relayed_at: None,
        },
    );
}

fn deliver(state: &AppState, to: &ConnHandle, out: Out) {
    match to.send(out) {
        SendOutcome::Overflow => tracing::debug!(conn = to.id, "send queue full; closing"),
        SendOutcome::Dropped => state.metrics.reject("queue_full"),
        SendOutcome::Queued | SendOutcome::Closed => {}
    }
}

/// A data frame as read: text frames are UTF-8 already (tungstenite checked), so they are
/// parsed as `&str`.
enum Frame {
    Text(axum::extract::ws::Utf8Bytes),
    Binary(axum::body::Bytes),
}

fn handle_message(
    state: &Arc<AppState>,
    handle: &Arc<ConnHandle>,
    parsed: Result<Msg, protocol::ParseError>,
    now: Instant,
) {
    let m = &state.metrics;
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            m.reject(e.metric_reason());
            tracing::debug!(conn = handle.id, error = %e, "bad message");
            reply(
                state,
                handle,
                protocol::encode_failure(&e.to_string()),
                Kind::Failure,
            );
            return;
        }
    };
    match req {
        Msg::Scrape(s) => {
            m.incoming(Kind::Scrape, 1);
            let text = state.tracker().scrape(&s);
            reply(state, handle, text, Kind::Scrape);
        }
        Msg::Announce(a) => {
            if a.answer.is_some() {
                m.incoming(Kind::Answer, 1);
            } else {
                m.incoming(Kind::Announce, 1);
                m.incoming(Kind::Offer, a.offers.len() as u64);
            }
            let info_hash = a.info_hash;
            let is_answer = a.answer.is_some();
            let result = state.tracker().announce(handle.id, a, now);
            match result {
                Ok(outcome) => {
                    if let Some(text) = outcome.reply {
                        reply(state, handle, text, Kind::Announce);
                    }
                    for d in outcome.deliveries {
                        deliver(state, &d.to, d.out);
                    }
                    for _ in 0..outcome.dropped {
                        m.reject("queue_full");
                    }
                }
                Err(refusal) => {
                    m.reject(refusal.metric_reason());
                    tracing::debug!(conn = handle.id, reason = %refusal, "announce refused");
                    if !is_answer {
                        reply(
                            state,
                            handle,
                            protocol::encode_announce_failure(&refusal.to_string(), &info_hash),
                            Kind::Failure,
                        );
                    }
                }
            }
        }
    }
}
