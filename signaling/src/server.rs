//! HTTP and WebSocket front: routes, static files, one task per WebSocket connection, graceful
//! shutdown.
//!
//! The WebSocket upgrade is answered here and the framing is our own (`ws`): each connection's
//! socket is split, its task owns the read half and the write half sits in an [`Outbox`] that
//! any task may write through (a relayed offer goes straight into the receiver's socket). What
//! a socket does not take at once waits in the outbox, bounded; beyond the bound the connection
//! is closed (or, under `--on-full-queue drop`, the message dropped), so memory stays bounded
//! whatever clients do. A connection with bytes waiting is not read until they are written,
//! which pushes back on a client that sends faster than it reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::{Config, FullQueue};
use crate::metrics::{Kind, Metrics};
use crate::outbox::{FlushError, Outbox, SendOutcome};
use crate::protocol::{self, Request as Msg};
use crate::tls::{TlsListener, TlsReloader};
use crate::tracker::{Member, Out, Tracker};
use crate::ws::{self, Incoming};

/// Read buffer per connection (allocated at the first message). Tracker messages are a few
/// KiB at most, and idle connections must stay small (goal: < 8 KiB each); a larger message
/// grows the buffer for as long as it is read.
const READ_BUFFER: usize = 2048;

/// Shared server state.
pub struct AppState {
    /// Configuration as started.
    pub config: Config,
    /// Counters served on `/metrics`.
    pub metrics: Metrics,
    tracker: Tracker,
    static_dir: PathBuf,
    next_conn: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// `(swarms, peers)` right now.
    pub fn sizes(&self) -> (usize, usize) {
        (self.tracker.swarm_count(), self.tracker.peer_count())
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
        tracker: Tracker::new(config.limits()),
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
        let n = state.tracker.expire(Instant::now(), ttl);
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
async fn root(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if is_upgrade(req.headers()) {
        return upgrade(state, req);
    }
    match tokio::fs::read_to_string(state.static_dir.join("index.html")).await {
        Ok(page) => Html(page).into_response(),
        Err(_) => Html(
            "<!doctype html><title>swarmcast</title><p>swarmcast signaling server. \
             Try the <a href=\"demo.html\">demo</a>.</p>\n",
        )
        .into_response(),
    }
}

/// `/announce`: WebSocket only.
async fn announce(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if is_upgrade(req.headers()) {
        return upgrade(state, req);
    }
    (
        StatusCode::UPGRADE_REQUIRED,
        [(header::UPGRADE, "websocket")],
        "this is a WebSocket tracker endpoint\n",
    )
        .into_response()
}

/// Whether the request asks for a WebSocket (RFC 6455 section 4.2.1); a request that does
/// not is served as plain HTTP.
fn is_upgrade(h: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

fn upgrade(state: Arc<AppState>, mut req: Request) -> Response {
    let cfg = &state.config;
    let h = req.headers();
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        state.metrics.reject("bad_handshake");
        return (
            StatusCode::BAD_REQUEST,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "unsupported WebSocket version\n",
        )
            .into_response();
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        state.metrics.reject("bad_handshake");
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if !cfg.allowed_origins.is_empty() {
        if let Some(origin) = h.get(header::ORIGIN) {
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
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => connection(TokioIo::new(upgraded), state).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        // base64 is always a valid header value.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
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
    /// The socket failed or the connection was killed: nothing more to send.
    Quiet,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

async fn connection(io: Io, state: Arc<AppState>) {
    let id = state.next_conn.fetch_add(1, Relaxed);
    let (rd, wr) = tokio::io::split(io);
    let handle = Arc::new(Outbox::new(
        id,
        Some(Box::new(wr)),
        state.config.send_queue,
        state.config.on_full_queue == FullQueue::Drop,
    ));
    let mut member = state.tracker.join(handle.clone());
    state.metrics.connections.fetch_add(1, Relaxed);
    state.metrics.connections_total.fetch_add(1, Relaxed);
    // Boxed so the spawned task's inline future stays small; the loop's state lives on the heap
    // once, sized by what it holds.
    let end = Box::pin(drive(rd, &state, &handle, &mut member)).await;
    state.tracker.leave(member);
    if let End::Close(code, reason) = end {
        handle.send_control(|b| ws::write_close(b, code, reason), &state.metrics);
        let _ = handle.flush(&state.metrics, Duration::from_secs(1)).await;
    }
    if let Some(mut w) = handle.close() {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    }
    state.metrics.connections.fetch_sub(1, Relaxed);
}

async fn drive(
    mut rd: ReadHalf<Io>,
    state: &Arc<AppState>,
    handle: &Arc<Outbox>,
    member: &mut Member,
) -> End {
    let cfg = &state.config;
    let m = &state.metrics;
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
    let mut reader = ws::Reader::new(READ_BUFFER, cfg.max_message_bytes);
    // Both wake-up sources are registered once and re-armed only after they fire, not
    // re-created (and re-registered under their locks) on every pass of the loop.
    let shut = shutdown.changed();
    tokio::pin!(shut);
    let wanted = handle.wanted();
    tokio::pin!(wanted);
    loop {
        tokio::select! {
            biased;
            _ = &mut shut => return End::Close(ws::close::GOING_AWAY, "server shutting down"),
            () = &mut wanted => {
                wanted.set(handle.wanted());
                if handle.killed() {
                    m.reject("slow_reader");
                    return End::Quiet;
                }
                // Boxed: the timer of a blocked flush is large, and rare.
                match Box::pin(handle.flush(m, send_timeout)).await {
                    Ok(()) => {}
                    Err(FlushError::Io) => return End::Quiet,
                    Err(FlushError::Timeout) => {
                        // The socket took nothing for `send_timeout`: a slow reader.
                        m.reject("slow_reader");
                        return End::Quiet;
                    }
                }
            }
            r = rd.read(reader.spare()) => {
                match r {
                    Ok(0) | Err(_) => return End::Quiet,
                    Ok(n) => reader.filled(n),
                }
                // The replies to everything this read brought leave in one write.
                handle.cork();
                let ended = loop {
                    let msg = match reader.next_message() {
                        Ok(None) => break None,
                        Ok(Some(msg)) => msg,
                        Err(e) => {
                            m.reject(match e {
                                ws::WsError::TooBig => "frame_too_large",
                                _ => "bad_frame",
                            });
                            tracing::debug!(conn = handle.id, error = %e, "closing");
                            break Some(End::Close(e.close_code(), match e {
                                ws::WsError::TooBig => "message too big",
                                ws::WsError::NotUtf8 => "text is not UTF-8",
                                ws::WsError::Protocol(why) => why,
                            }));
                        }
                    };
                    let parsed = match msg {
                        Incoming::Text(t) => protocol::parse_str(t),
                        Incoming::Binary(b) => protocol::parse(b),
                        Incoming::Ping(p) => {
                            handle.send_control(|b| ws::write_pong(b, p), m);
                            continue;
                        }
                        Incoming::Pong => continue,
                        Incoming::Close(_) => break Some(End::Close(ws::close::NORMAL, "")),
                    };
                    last_msg = Instant::now();
                    if !bucket.take(last_msg, cfg.rate, cfg.rate_burst) {
                        m.reject("rate_limited");
                        violations += 1;
                        if f64::from(violations) > cfg.rate_burst.max(1.0) {
                            break Some(End::Close(ws::close::POLICY, "rate limit exceeded"));
                        }
                        reply(state, handle, protocol::encode_failure("rate limit exceeded"), Kind::Failure);
                        continue;
                    }
                    handle_message(state, handle, member, parsed, last_msg);
                };
                handle.uncork(m);
                if let Some(end) = ended {
                    return end;
                }
            }
            _ = tick.tick() => {
                if last_msg.elapsed() >= idle {
                    m.reject("idle_timeout");
                    return End::Close(ws::close::NORMAL, "idle timeout");
                }
                handle.send_control(ws::write_ping, m);
            }
        }
    }
}

fn reply(state: &AppState, handle: &Outbox, text: String, kind: Kind) {
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

fn deliver(state: &AppState, to: &Outbox, out: Out) {
    match to.send(&out.text, out.kind, out.relayed_at, &state.metrics) {
        SendOutcome::Overflow => tracing::debug!(conn = to.id, "send queue full; closing"),
        SendOutcome::Dropped => state.metrics.reject("queue_full"),
        SendOutcome::Queued | SendOutcome::Closed => {}
    }
}

fn handle_message(
    state: &Arc<AppState>,
    handle: &Arc<Outbox>,
    member: &mut Member,
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
            let text = state.tracker.scrape(&s);
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
            // The shard's lock covers the swarm update and the picks; encoding happens after it.
            let result = state.tracker.announce(member, &a, now);
            match result {
                Ok(outcome) => {
                    if let Some(r) = outcome.reply {
                        // Under the drop policy a full queue would discard it: not encoded.
                        if handle.has_room() {
                            reply(state, handle, r.encode(&a.info_hash), Kind::Announce);
                        } else {
                            m.reject("queue_full");
                        }
                    }
                    for d in &outcome.deliveries {
                        if let Some(out) = d.encode(&a, now) {
                            deliver(state, &d.to, out);
                        }
                    }
                    if outcome.dropped > 0 {
                        m.reject_n("queue_full", outcome.dropped as u64);
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
