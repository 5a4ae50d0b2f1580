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

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::budget::{self, AddrKey};
use crate::config::{Config, FullQueue};
use crate::files::{self, Resolved};
use crate::listen::{self, Pending};
use crate::metrics::{Kind, Metrics};
use crate::outbox::{FlushError, Outbox, SendBudget, SendOutcome};
use crate::protocol::{self, Request as Msg};
use crate::tls::TlsReloader;
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
    /// Connections in their HTTP phase (see [`listen`]).
    pending: Pending,
    /// Bytes queued over all connections.
    send_budget: Arc<SendBudget>,
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// Swarm registrations charged to client address `ip` now.
    pub fn held_by(&self, ip: std::net::IpAddr) -> usize {
        self.tracker.held_by(AddrKey::of(ip))
    }

    /// Bytes waiting for sockets over all connections now.
    pub fn queued_bytes(&self) -> usize {
        self.send_budget.queued()
    }

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
    let tls_acceptor = tls.clone();
    let (stop, stop_rx) = watch::channel(false);
    let grace = config.grace();
    let ttl = config.idle();
    let send_budget = Arc::new(SendBudget::new(config.max_queued_bytes));
    let state = Arc::new(AppState {
        static_dir: config.static_dir(),
        tracker: Tracker::new(config.limits()),
        config,
        metrics: Metrics::default(),
        next_conn: AtomicU64::new(1),
        pending: Pending::default(),
        send_budget,
        shutdown: stop_rx.clone(),
    });
    let app = router(state.clone());
    let st = state.clone();
    let task = tokio::spawn(async move {
        let sweeper = tokio::spawn(sweep(st.clone(), ttl));
        // The listener goes with the loop: no connection waits in its backlog during the grace.
        accept_loop(listener, &st, app, tls_acceptor, stop_rx).await;
        sweeper.abort();
        // Connections saw the same signal; wait for them to close.
        let deadline = Instant::now() + grace;
        while (st.metrics.connections.load(Relaxed) > 0 || !st.pending.is_empty())
            && Instant::now() < deadline
        {
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

/// Accepts until the server stops; each connection gets a task of its own: its TLS handshake
/// (with `--tls-cert`), then HTTP (see [`listen`]).
async fn accept_loop(
    listener: TcpListener,
    state: &Arc<AppState>,
    app: Router,
    tls: Option<Arc<TlsReloader>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_log = None;
    loop {
        let (tcp, remote) = tokio::select! {
            c = listen::accept(&listener, &state.pending, &state.metrics, &mut last_log) => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        // Small messages must not wait for Nagle + delayed ACK (40 ms).
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let reg = state.pending.register();
            let deadline = state.config.request_timeout();
            let m = &state.metrics;
            match tls {
                None => {
                    listen::serve_http(tcp, remote, app, deadline, &reg.evicted, stop, m).await;
                }
                Some(tls) => {
                    let shake = tokio::time::timeout(deadline, tls.acceptor().accept(tcp));
                    let stream = tokio::select! {
                        r = shake => r,
                        () = reg.evicted.notified() => return,
                    };
                    match stream {
                        Ok(Ok(s)) => {
                            listen::serve_http(s, remote, app, deadline, &reg.evicted, stop, m)
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            m.reject("request_timeout");
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
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
    Router::new()
        .route("/", get(root))
        .route("/announce", get(announce))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(static_file)
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
        {
            let mut text = state.metrics.render(swarms, peers);
            crate::metrics::render_gauge(
                &mut text,
                "http_connections",
                "Connections in their HTTP phase (TLS handshake, waiting for or serving a request).",
                state.pending.len(),
            );
            crate::metrics::render_gauge(
                &mut text,
                "queued_bytes",
                "Bytes waiting for sockets over all connections.",
                state.send_budget.queued(),
            );
            text
        },
    )
        .into_response()
}

/// `/`: a WebSocket upgrade (WebTorrent clients use the tracker URL as given), else the index.
async fn root(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if is_upgrade(req.headers()) {
        return upgrade(state, req);
    }
    let page = match files::resolve(&state.static_dir, "/").await {
        Resolved::File(index) => tokio::fs::read_to_string(index).await.ok(),
        _ => None,
    };
    match page {
        Some(page) => Html(page).into_response(),
        None => Html(
            "<!doctype html><title>swarmcast</title><p>swarmcast signaling server. \
             Try the <a href=\"demo.html\">demo</a>.</p>\n",
        )
        .into_response(),
    }
}

/// Everything else: a file of the static folder (see [`files`] for which ones).
async fn static_file(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match files::resolve(&state.static_dir, req.uri().path()).await {
        Resolved::File(path) => match ServeFile::new(path).try_call(req).await {
            Ok(res) => res.map(axum::body::Body::new),
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        },
        Resolved::AddSlash => {
            let to = format!("{}/", req.uri().path());
            match HeaderValue::from_str(&to) {
                Ok(to) => {
                    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, to)]).into_response()
                }
                Err(_) => StatusCode::NOT_FOUND.into_response(),
            }
        }
        Resolved::NotFound => (StatusCode::NOT_FOUND, "not found\n").into_response(),
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

/// RFC 6455 section 4.2.1: the key is the base64 of 16 bytes, i.e. 22 base64 characters and
/// `==` (24 in all).
fn valid_key(k: &[u8]) -> bool {
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
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
    if req.version() < axum::http::Version::HTTP_11 {
        // RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 (or later) request.
        state.metrics.reject("bad_handshake");
        return (StatusCode::BAD_REQUEST, "WebSocket needs HTTP/1.1\n").into_response();
    }
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
    else {
        state.metrics.reject("bad_handshake");
        return (
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key\n",
        )
            .into_response();
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
    let addr = match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => AddrKey::of(budget::client_addr(
            peer.ip(),
            &cfg.trusted_proxies,
            h.get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )),
        None => AddrKey::unspecified(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => connection(TokioIo::new(upgraded), state, addr).await,
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

/// A token bucket: `rate` messages per second, up to `burst`.
///
/// A connection over its rate is not answered with a failure: its next message simply waits
/// (the connection is not read meanwhile, so TCP pushes back on the client). A refusal has
/// no good form here: the reference client tears down every torrent sharing the socket on a
/// reply without `action`, and one with `action` loses that announce until the next interval
/// (issue 24: a WebTorrent client announcing 100 torrents at once had 40 refused).
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// How long until a message may be handled, `None` if one may now.
    fn wait(&mut self, now: Instant, rate: f64, burst: f64) -> Option<Duration> {
        if rate <= 0.0 {
            return None;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst.max(1.0));
        if self.tokens >= 1.0 {
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / rate).max(Duration::from_millis(1)))
        }
    }

    /// Spends one message's token (after [`Bucket::wait`] said it may).
    fn take(&mut self, rate: f64) {
        if rate > 0.0 {
            self.tokens -= 1.0;
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

async fn connection(io: Io, state: Arc<AppState>, addr: AddrKey) {
    let id = state.next_conn.fetch_add(1, Relaxed);
    let (rd, wr) = tokio::io::split(io);
    let handle = Arc::new(
        Outbox::new(
            id,
            Some(Box::new(wr)),
            state.config.send_queue,
            state.config.on_full_queue == FullQueue::Drop,
        )
        .with_byte_limits(state.config.send_queue_bytes, state.send_budget.clone()),
    );
    let mut member = state.tracker.join(handle.clone(), addr);
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
    // The first tick comes at the first-message deadline (or the first ping, if sooner): a
    // WebSocket that has sent nothing by then is closed, as an HTTP request that never comes
    // would be (clients announce as soon as the socket opens). Then one every ping interval.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.request_timeout().min(cfg.ping()),
        cfg.ping(),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = Conn {
        last_msg: Instant::now(),
        heard: false,
        bucket: Bucket {
            tokens: cfg.rate_burst.max(1.0),
            last: Instant::now(),
        },
        reader: ws::Reader::new(READ_BUFFER, cfg.max_message_bytes),
    };
    // Both wake-up sources are registered once and re-armed only after they fire, not
    // re-created (and re-registered under their locks) on every pass of the loop.
    let shut = shutdown.changed();
    tokio::pin!(shut);
    let wanted = handle.wanted();
    tokio::pin!(wanted);
    // A connection over its rate: its messages wait (and it is not read) until this fires.
    // Allocated only then: a timer held for the connection's life would cost every idle
    // connection its size.
    let mut throttle: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let step = tokio::select! {
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
                    Ok(()) => continue,
                    Err(FlushError::Io) => return End::Quiet,
                    Err(FlushError::Timeout | FlushError::Killed) => {
                        // The socket took nothing for `send_timeout`: a slow reader.
                        m.reject("slow_reader");
                        return End::Quiet;
                    }
                }
            }
            () = async { if let Some(t) = throttle.as_mut() { t.await } }, if throttle.is_some() => {
                throttle = None;
                conn.handle_buffered(state, handle, member)
            }
            r = rd.read(conn.reader.spare()), if throttle.is_none() => {
                match r {
                    Ok(0) | Err(_) => return End::Quiet,
                    Ok(n) => conn.reader.filled(n),
                }
                conn.handle_buffered(state, handle, member)
            }
            _ = tick.tick() => {
                // `last_msg` is the connection's start until the first message.
                if !conn.heard && conn.last_msg.elapsed() >= cfg.request_timeout() {
                    m.reject("request_timeout");
                    return End::Close(ws::close::POLICY, "no request");
                }
                if conn.last_msg.elapsed() >= idle {
                    m.reject("idle_timeout");
                    return End::Close(ws::close::NORMAL, "idle timeout");
                }
                handle.send_control(ws::write_ping, m);
                continue;
            }
        };
        match step {
            Step::Read => {}
            Step::Wait(d) => {
                m.reject("rate_limited");
                throttle = Some(Box::pin(tokio::time::sleep(d)));
            }
            Step::End(end) => return end,
        }
    }
}

/// A connection's reading side: what it has sent and how fast it may send.
struct Conn {
    last_msg: Instant,
    /// Whether any message arrived yet (see the first-message deadline in [`drive`]).
    heard: bool,
    bucket: Bucket,
    reader: ws::Reader,
}

/// What [`Conn::handle_buffered`] left to do.
enum Step {
    /// Everything buffered is handled: read more.
    Read,
    /// Over the rate: handle the rest after this long.
    Wait(Duration),
    /// Close.
    End(End),
}

impl Conn {
    /// Handles the complete messages in the read buffer, as far as the rate allows.
    fn handle_buffered(
        &mut self,
        state: &Arc<AppState>,
        handle: &Arc<Outbox>,
        member: &mut Member,
    ) -> Step {
        let cfg = &state.config;
        let m = &state.metrics;
        // The replies to everything this read brought leave in one write.
        handle.cork();
        let step = loop {
            if self.reader.is_partial() {
                if let Some(d) = self.bucket.wait(Instant::now(), cfg.rate, cfg.rate_burst) {
                    break Step::Wait(d);
                }
            }
            let msg = match self.reader.next_message() {
                Ok(None) => break Step::Read,
                Ok(Some(msg)) => msg,
                Err(e) => {
                    m.reject(match e {
                        ws::WsError::TooBig => "frame_too_large",
                        _ => "bad_frame",
                    });
                    tracing::debug!(conn = handle.id, error = %e, "closing");
                    break Step::End(End::Close(
                        e.close_code(),
                        match e {
                            ws::WsError::TooBig => "message too big",
                            ws::WsError::NotUtf8 => "text is not UTF-8",
                            ws::WsError::Protocol(why) => why,
                        },
                    ));
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
                Incoming::Close(_) => break Step::End(End::Close(ws::close::NORMAL, "")),
            };
            self.last_msg = Instant::now();
            self.heard = true;
            self.bucket.take(cfg.rate);
            handle_message(state, handle, member, parsed, self.last_msg);
        };
        handle.uncork(m);
        step
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
