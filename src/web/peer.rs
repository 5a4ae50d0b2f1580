//! [`SwarmPeer`]: the page-facing object, and the [`Driver`] behind it: the product's
//! [`Node`] plus the browser adapters that carry out what it asks — [`Rtc`] (peer connections),
//! [`Sockets`] (tracker WebSockets), the [`Player`] (MSE) and the timers.
//!
//! Every browser callback posts a typed event to the one queue ([`super::queue`]); its
//! dispatcher feeds them to [`Driver::on_event`] one at a time. After each event the driver
//! drains the node's actions completely, reports the transports' backlogs, and re-arms one
//! `setTimeout` for `poll_timeout()`. Which connections to make, keep or drop, when to announce
//! and when to rejoin are the node's decisions, tested natively.

use super::player::Player;
use super::queue::{dispatch, post, Handler, PlatformEvent, Shared, Sink, WebEvent};
use super::rtc::Rtc;
use super::tracker::Sockets;
use super::util::{self, Callback};
use crate::client::node::{
    Action, CloseReason, ConnId, Event, Node, NodeConfig, NodeRole, RejoinReason,
};
use crate::client::playback::LatencyConfig;
use crate::client::status::page_state;
use crate::core::{
    Config, Instant, PeerId, SegmentMeta, StreamId, StreamKey, MAX_PIECES_PER_SEGMENT, PIECE_SIZE,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::BTreeSet;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// Most rounds of "report bufferedAmount, drain again" after one event: the core stops sending
/// once a transport holds enough, this only bounds a misbehaving loop.
const MAX_PUMP_ROUNDS: usize = 8;

/// The housekeeping interval: the player's control loop, backlog safety net, rates, state.
const TICK_MS: i32 = 250;

/// Page callbacks (`onEvent`) waiting to fire outside the driver's borrow.
type PageEvents = Vec<(&'static str, JsValue)>;

/// What callbacks hold: they never keep the peer alive.
pub(crate) type WeakDriver = std::rc::Weak<Shared<Driver>>;

/// Runs `f` on the driver behind `weak`, now or right after what it is doing (the player's
/// callbacks enter through this).
pub(crate) fn with(weak: &WeakDriver, f: impl FnOnce(&mut Driver) + 'static) {
    super::queue::with(weak, f);
}

/// Everything one peer runs. Lives in the [`Shared`] cell owned by [`SwarmPeer`].
pub(crate) struct Driver {
    me: WeakDriver,
    pub(crate) node: Node,
    origin_ms: f64,
    pub(crate) rtc: Rtc,
    sockets: Sockets,
    pub(crate) player: Option<Player>,
    on_event: Option<js_sys::Function>,
    /// Page callbacks queued while the driver is borrowed; fired by the dispatcher.
    events: PageEvents,
    node_timer: Option<(i32, Instant)>,
    node_timer_cb: Option<Closure<dyn FnMut()>>,
    tick_cb: Option<Closure<dyn FnMut()>>,
    tick_handle: Option<i32>,
    pagehide_cb: Option<Callback>,
    /// A tab coming back to the foreground is re-synced at once (its timers were throttled
    /// while hidden, so the next tick could be a second away).
    visible_cb: Option<Callback>,
    started: bool,
    destroyed: bool,
    #[cfg(feature = "test-hooks")]
    test_corrupt: bool,
    rates: Rates,
    state: (&'static str, String),
    fatal: Option<(&'static str, String)>,
}

/// Upload and download rates, from the core's byte counters sampled once a second.
#[derive(Default)]
struct Rates {
    at_ms: f64,
    up: u64,
    down: u64,
    up_kbps: f64,
    down_kbps: f64,
}

/// Calls the page's `onEvent(type, detail)` for each queued event.
fn fire(cb: Option<js_sys::Function>, events: PageEvents) {
    if let Some(cb) = cb {
        for (kind, detail) in events {
            let _ = cb.call2(&JsValue::NULL, &JsValue::from_str(kind), &detail);
        }
    }
}

impl Driver {
    /// Microseconds since this peer started, as the node's clock.
    fn now(&self) -> Instant {
        Instant::from_micros(((util::now_ms() - self.origin_ms).max(0.0) * 1000.0) as u64)
    }

    /// The page events queued so far, and the callback to fire them with.
    fn take_page_events(&mut self) -> (Option<js_sys::Function>, PageEvents) {
        (self.on_event.clone(), std::mem::take(&mut self.events))
    }

    /// One event from the queue.
    fn on_event(&mut self, ev: WebEvent<Driver>) {
        if self.destroyed {
            return;
        }
        match ev {
            WebEvent::Platform(PlatformEvent::Node(e)) => self.feed(e),
            WebEvent::Platform(PlatformEvent::DataChannel { conn, dc }) => {
                self.rtc.attach_channel(conn, dc)
            }
            WebEvent::NodeTimer => {
                self.node_timer = None;
                self.feed(Event::Timeout);
            }
            WebEvent::Tick | WebEvent::Visible => self.tick(),
            WebEvent::PageHide { persisted } => {
                // `persisted`: the page may come back from the back/forward cache; keep the
                // connections. Otherwise it is unloading: say goodbye so neighbours replace us
                // now rather than when ICE times out (10–30 s).
                if persisted {
                    let now = self.now();
                    self.node.pause_trackers(now);
                    self.pump();
                } else {
                    self.destroy();
                }
            }
            WebEvent::Call(f) => f(self),
        }
    }

    /// Feeds one event to the node and carries out everything it asks for.
    fn feed(&mut self, ev: Event) {
        let now = self.now();
        self.node.handle(now, ev);
        self.pump();
    }

    /// Drains the node's actions, reports the resulting transport backlogs, re-arms the timer.
    fn pump(&mut self) {
        for _ in 0..MAX_PUMP_ROUNDS {
            let mut touched = BTreeSet::new();
            while let Some(action) = self.node.poll_action() {
                self.apply(action, &mut touched);
            }
            let backlog: Vec<(ConnId, usize)> = touched
                .into_iter()
                .filter_map(|c| self.rtc.buffered(c).map(|b| (c, b)))
                .collect();
            if backlog.is_empty() {
                break;
            }
            let now = self.now();
            for (conn, bytes) in backlog {
                self.node
                    .handle(now, Event::ChannelBuffered { conn, bytes });
            }
        }
        self.arm_node_timer();
    }

    fn apply(&mut self, action: Action, touched: &mut BTreeSet<ConnId>) {
        match action {
            Action::TrackerConnect { tracker, url } => self.sockets.connect(tracker, &url),
            Action::TrackerSend { tracker, request } => {
                self.sockets.send(tracker, &request.to_json())
            }
            Action::TrackerClose { tracker } => self.sockets.close(tracker),
            Action::CreateOffer { conn } => self.rtc.create_offer(conn),
            Action::AcceptOffer { conn, sdp } => self.rtc.accept_offer(conn, sdp),
            Action::ApplyAnswer { conn, sdp } => self.rtc.apply_answer(conn, sdp),
            Action::Send { conn, data } => {
                #[cfg(feature = "test-hooks")]
                let data = if self.test_corrupt {
                    bytes::Bytes::from(crate::client::test_hooks::corrupt_transmit(data.to_vec()))
                } else {
                    data
                };
                if self.rtc.send(conn, &data) {
                    touched.insert(conn);
                } else {
                    // The channel died under us: the node hears it as closed, next in line.
                    let ev = PlatformEvent::Node(Event::ChannelClosed { conn });
                    post(&self.me, WebEvent::Platform(ev));
                }
            }
            Action::Close { conn, reason } => {
                util::debug(&format!("close connection {}: {reason:?}", conn.0));
                if reason == CloseReason::Rejoin {
                    self.rtc.retire(conn, util::now_ms());
                } else {
                    self.rtc.close(conn);
                }
            }
            Action::Init(init) => {
                if let Some(p) = self.player.as_mut() {
                    if let Err(msg) = p.on_init(init) {
                        self.fail("codec", msg);
                    }
                }
            }
            Action::Play(seg) => {
                if let Some(p) = self.player.as_mut() {
                    p.on_segment(seg);
                }
            }
            Action::Skip { seq } => {
                if let Some(p) = self.player.as_mut() {
                    p.on_skip(seq);
                }
            }
            Action::Rejoined { peer, reason } => {
                // The e2e restart test reads these words: they tell a header that announced the
                // new session from the silence fallback.
                let why = match reason {
                    RejoinReason::SourceRestarted => "the broadcaster restarted the stream",
                    RejoinReason::Silence => "no media for too long",
                };
                util::warn(&format!("{why}: rejoining the swarm as {peer}"));
                if let Some(p) = self.player.as_mut() {
                    p.forget_stream();
                }
            }
        }
    }

    fn arm_node_timer(&mut self) {
        let want = self.node.poll_timeout();
        if self.node_timer.map(|(_, at)| at) == want {
            return;
        }
        if let Some((h, _)) = self.node_timer.take() {
            util::window().clear_timeout_with_handle(h);
        }
        let (Some(at), Some(cb)) = (want, self.node_timer_cb.as_ref()) else {
            return;
        };
        let delay_ms = at
            .saturating_duration_since(self.now())
            .as_micros()
            .div_ceil(1000);
        let delay_ms = delay_ms.min(i32::MAX as u128) as i32;
        if let Ok(h) = util::window().set_timeout_with_callback_and_timeout_and_arguments_0(
            cb.as_ref().unchecked_ref(),
            delay_ms,
        ) {
            self.node_timer = Some((h, at));
        }
    }

    /// Queues a page event (`state`, `error`).
    fn emit(&mut self, kind: &'static str, detail: JsValue) {
        self.events.push((kind, detail));
    }

    /// A failure the viewer cannot recover from by waiting: shown in the player, and
    /// the `error` event.
    fn fail(&mut self, code: &'static str, message: String) {
        if self.fatal.is_some() {
            return;
        }
        util::warn(&message);
        let detail = js_sys::Object::new();
        util::set(&detail, "code", code);
        util::set(&detail, "message", message.as_str());
        self.emit("error", detail.into());
        self.fatal = Some((code, message));
        self.update_state();
    }

    /// The 250 ms housekeeping tick: the node's schedule, the player's control loop, rates,
    /// state.
    fn tick(&mut self) {
        let now = util::now_ms();
        self.rtc.tick(now);
        self.sockets.tick();
        self.feed(Event::Timeout);
        // Safety net under `bufferedamountlow`: the core's view of every backlog is at most one
        // tick old, whatever events were missed.
        let backlogs = self.rtc.backlogs();
        if !backlogs.is_empty() {
            let at = self.now();
            for (conn, bytes) in backlogs {
                self.node.handle(at, Event::ChannelBuffered { conn, bytes });
            }
            self.pump();
        }
        let media_fresh = self.node.facts(self.now()).media_fresh;
        if let Some(p) = self.player.as_mut() {
            if let Err(msg) = p.tick(now, media_fresh) {
                self.fail("decode", msg);
            }
        }
        if let Some(pts_us) = self.player.as_ref().and_then(|p| p.playhead_pts_us()) {
            self.feed(Event::Playhead { pts_us });
        }
        if now - self.rates.at_ms >= 1000.0 {
            let s = self.node.stats();
            let secs = (now - self.rates.at_ms) / 1000.0;
            let (up, down) = (s.wire_bytes_up, s.wire_bytes_down);
            if self.rates.at_ms > 0.0 {
                let k = |d: u64| d as f64 * 8.0 / 1000.0 / secs;
                // Smoothed over a few seconds so the overlay does not flicker.
                self.rates.up_kbps =
                    0.6 * self.rates.up_kbps + 0.4 * k(up.saturating_sub(self.rates.up));
                self.rates.down_kbps =
                    0.6 * self.rates.down_kbps + 0.4 * k(down.saturating_sub(self.rates.down));
            }
            self.rates = Rates {
                at_ms: now,
                up,
                down,
                ..self.rates
            };
        }
        self.update_state();
    }

    /// Recomputes the page-visible state and emits `state` when it changed.
    fn update_state(&mut self) {
        let mut facts = self.node.facts(self.now());
        facts.destroyed |= self.destroyed;
        facts.fatal = self.fatal.as_ref().map(|(_, m)| m.clone());
        facts.playing = self.player.as_ref().is_some_and(|p| p.is_playing());
        let next = page_state(&facts);
        if next != self.state {
            self.state = next;
            let detail = js_sys::Object::new();
            util::set(&detail, "state", self.state.0);
            util::set(&detail, "message", self.state.1.as_str());
            self.emit("state", detail.into());
        }
    }

    fn stats(&self) -> js_sys::Object {
        let s = self.node.stats();
        let o = js_sys::Object::new();
        util::set(&o, "state", self.state.0);
        util::set(&o, "message", self.state.1.as_str());
        util::set(
            &o,
            "role",
            if self.node.is_source() {
                "source"
            } else {
                "viewer"
            },
        );
        util::set(&o, "peerId", self.node.local_id().to_string());
        util::set(&o, "neighbours", s.neighbours as f64);
        util::set(&o, "bytesFromPeers", s.bytes_from_peers as f64);
        util::set(&o, "bytesFromSource", s.bytes_from_source as f64);
        util::set(&o, "bytesUp", s.bytes_up as f64);
        let total = s.bytes_from_peers + s.bytes_from_source;
        let share = if total == 0 {
            0.0
        } else {
            s.bytes_from_peers as f64 / total as f64
        };
        util::set(&o, "peerShare", share);
        util::set(&o, "upKbps", self.rates.up_kbps);
        // What the core paces by, so pages show it instead of recomputing it: the stream's
        // bitrate from the signed headers, and this peer's upload cap (the source's is a
        // multiple of that bitrate, at most its `uploadKbps`).
        util::set(&o, "bitrateKbps", s.bitrate_kbps as f64);
        util::set(
            &o,
            "uploadCapKbps",
            self.node.swarm().upload_rate() as f64 / 125.0,
        );
        util::set(&o, "downKbps", self.rates.down_kbps);
        util::set(&o, "segmentsPlayed", s.segments_played as f64);
        util::set(&o, "segmentsSkipped", s.segments_skipped as f64);
        util::set(&o, "forgersCut", s.forgers_cut as f64);
        util::set(&o, "capacityShort", s.capacity_short);
        util::set(&o, "piecesPulled", s.pieces_pulled as f64);
        util::set(&o, "parentStalls", s.stalls as f64);
        let depths = js_sys::Array::new();
        for d in &s.stripe_depths {
            depths.push(&JsValue::from_f64(*d as f64));
        }
        util::set(&o, "stripeDepths", depths);
        util::set(
            &o,
            "trackersOpen",
            self.node.trackers().iter().filter(|t| t.is_open()).count() as f64,
        );
        // Peers in the swarm besides this one, as the trackers last said (the source's
        // audience; `null` before any tracker answered).
        let others = self
            .node
            .trackers()
            .iter()
            .filter_map(|t| t.swarm_size)
            .max()
            .map(|n| n.saturating_sub(1) as f64);
        util::set(
            &o,
            "swarmPeers",
            others.map(JsValue::from_f64).unwrap_or(JsValue::NULL),
        );
        util::set(&o, "connections", self.node.conns().len() as f64);
        util::set(&o, "connectionsOpen", self.node.conns().open_count() as f64);
        let p = self.player.as_ref();
        let opt = |v: Option<f64>| v.map(JsValue::from_f64).unwrap_or(JsValue::NULL);
        util::set(&o, "latencyMs", opt(p.and_then(|p| p.latency_ms())));
        util::set(&o, "bufferMs", opt(p.map(|p| p.buffer_ms())));
        util::set(&o, "deliveryMs", opt(p.and_then(|p| p.delivery_ms)));
        util::set(&o, "targetBufferMs", opt(p.map(|p| p.target_ms())));
        util::set(&o, "appendQueue", p.map_or(0.0, |p| p.queued() as f64));
        util::set(&o, "stalls", p.map_or(0.0, |p| p.stalls.stalls as f64));
        util::set(&o, "stallMs", p.map_or(0.0, |p| p.stalls.stall_ms));
        util::set(&o, "currentTime", p.map_or(0.0, |p| p.current_time()));
        util::set(&o, "reinits", p.map_or(0.0, |p| p.reinit_count as f64));
        o
    }

    fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        // `stopped` to the trackers, goodbyes to the neighbours (so they replace us at once
        // rather than on a timeout), then every connection closed.
        let now = self.now();
        self.node.close(now);
        self.pump();
        self.rtc.close_all();
        self.sockets.close_all();
        if let Some(p) = self.player.as_mut() {
            p.close();
        }
        let w = util::window();
        if let Some((h, _)) = self.node_timer.take() {
            w.clear_timeout_with_handle(h);
        }
        if let Some(h) = self.tick_handle.take() {
            w.clear_interval_with_handle(h);
        }
        if let Some(cb) = self.pagehide_cb.as_ref() {
            let _ = w.remove_event_listener_with_callback("pagehide", cb.as_ref().unchecked_ref());
        }
        if let (Some(cb), Some(doc)) = (self.visible_cb.as_ref(), w.document()) {
            let _ = doc.remove_event_listener_with_callback(
                "visibilitychange",
                cb.as_ref().unchecked_ref(),
            );
        }
        self.destroyed = true;
        self.update_state();
    }

    /// Starts: the timers, `pagehide` and `visibilitychange` listeners, the player, and the
    /// node's first step (which opens the tracker sockets).
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let w = self.me.clone();
        self.node_timer_cb = Some(Closure::wrap(Box::new(move || {
            post(&w, WebEvent::NodeTimer);
        }) as Box<dyn FnMut()>));
        let w = self.me.clone();
        let tick = Closure::wrap(Box::new(move || {
            post(&w, WebEvent::Tick);
        }) as Box<dyn FnMut()>);
        self.tick_handle = util::window()
            .set_interval_with_callback_and_timeout_and_arguments_0(
                tick.as_ref().unchecked_ref(),
                TICK_MS,
            )
            .ok();
        self.tick_cb = Some(tick);
        let w = self.me.clone();
        let hide = util::callback(move |ev: JsValue| {
            let persisted = util::get(&ev, "persisted").is_truthy();
            post(&w, WebEvent::PageHide { persisted });
        });
        let _ = util::window()
            .add_event_listener_with_callback("pagehide", hide.as_ref().unchecked_ref());
        self.pagehide_cb = Some(hide);
        let w = self.me.clone();
        let visible = util::callback(move |_| {
            if util::window().document().is_some_and(|d| !d.hidden()) {
                post(&w, WebEvent::Visible);
            }
        });
        if let Some(doc) = util::window().document() {
            let _ = doc.add_event_listener_with_callback(
                "visibilitychange",
                visible.as_ref().unchecked_ref(),
            );
        }
        self.visible_cb = Some(visible);
        if let Some(p) = self.player.as_mut() {
            p.attach();
        }
        self.tick();
    }
}

impl Handler for Driver {
    fn handle(&mut self, ev: WebEvent<Self>) {
        self.on_event(ev);
    }

    fn after(&mut self) -> Box<dyn FnOnce()> {
        let (cb, events) = self.take_page_events();
        Box::new(move || fire(cb, events))
    }
}

/// One peer of one stream: a viewer (with a `<video>` to play into) or, given the stream's
/// `secret`, the source.
///
/// ```js
/// const peer = new SwarmPeer({ stream, trackers, iceServers, video, onEvent(type, detail) {} });
/// peer.start();
/// peer.stats(); // { state, neighbours, bytesFromPeers, bytesFromSource, bytesUp, latencyMs, ... }
/// peer.destroy();
/// ```
#[wasm_bindgen]
pub struct SwarmPeer {
    inner: Rc<Shared<Driver>>,
}

fn opt_string(opts: &JsValue, key: &str) -> Option<String> {
    util::get(opts, key).as_string().filter(|s| !s.is_empty())
}

fn opt_f64(opts: &JsValue, key: &str) -> Option<f64> {
    util::get(opts, key).as_f64().filter(|v| v.is_finite())
}

/// The tracker a page uses when given none: `/announce` on the page's own origin.
fn default_tracker() -> Option<String> {
    let loc = util::window().location();
    let host = loc.host().ok()?;
    let scheme = if loc.protocol().ok()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    Some(format!("{scheme}://{host}/announce"))
}

impl SwarmPeer {
    /// Runs `f` on the driver now, then fires the page events it queued and dispatches what
    /// callbacks queued meanwhile. `None` only when called from inside the driver (a page
    /// callback cannot be: those fire outside it).
    fn run<R>(&self, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
        let (r, cb, events) = {
            let mut d = self.inner.driver.try_borrow_mut().ok()?;
            let r = f(&mut d);
            let (cb, events) = d.take_page_events();
            (r, cb, events)
        };
        fire(cb, events);
        dispatch(&self.inner);
        Some(r)
    }
}

#[wasm_bindgen]
impl SwarmPeer {
    /// Creates a peer from options: `stream` (stream id), `trackers` (WebSocket URLs, default
    /// the page origin's `/announce`), `iceServers` (RTCIceServer[], default none), `secret`
    /// (makes this peer the source), `uploadKbps`, `video` (an HTMLVideoElement to play into),
    /// `targetLatencyMs` (player buffer, default 1000), `onEvent(type, detail)`.
    #[wasm_bindgen(constructor)]
    pub fn new(opts: JsValue) -> Result<SwarmPeer, JsError> {
        console_error_panic_hook::set_once();
        if !util::has_global("RTCPeerConnection") {
            return Err(JsError::new(
                "This browser does not support WebRTC, which swarmcast needs.",
            ));
        }
        let secret = opt_string(&opts, "secret");
        let key = match &secret {
            Some(s) => {
                let bytes = URL_SAFE_NO_PAD
                    .decode(s.trim())
                    .map_err(|_| JsError::new("secret is not URL-safe base64"))?;
                let arr: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| JsError::new("secret must be 32 bytes"))?;
                Some(StreamKey::from_secret(arr))
            }
            None => None,
        };
        let stream: StreamId = match (opt_string(&opts, "stream"), &key) {
            (Some(s), Some(k)) => {
                let id: StreamId = s.parse().map_err(|e| JsError::new(&format!("{e}")))?;
                if id != k.stream_id() {
                    return Err(JsError::new("secret does not belong to this stream"));
                }
                id
            }
            (Some(s), None) => s.parse().map_err(|e| JsError::new(&format!("{e}")))?,
            (None, Some(k)) => k.stream_id(),
            (None, None) => return Err(JsError::new("option `stream` is required")),
        };
        let mut trackers: Vec<String> = match util::get(&opts, "trackers") {
            v if js_sys::Array::is_array(&v) => js_sys::Array::from(&v)
                .iter()
                .filter_map(|t| t.as_string())
                .filter(|t| t.starts_with("ws://") || t.starts_with("wss://"))
                .collect(),
            v => v.as_string().into_iter().collect(),
        };
        if trackers.is_empty() {
            trackers.extend(default_tracker());
        }
        let ice_servers = match util::get(&opts, "iceServers") {
            v if js_sys::Array::is_array(&v) => v,
            _ => js_sys::Array::new().into(),
        };
        let video = util::get(&opts, "video")
            .dyn_into::<web_sys::HtmlVideoElement>()
            .ok();
        if video.is_some() && !util::has_global("MediaSource") {
            return Err(JsError::new(
                "This browser does not support Media Source Extensions, which the player needs.",
            ));
        }
        let mut config = Config::default();
        if let Some(k) = opt_f64(&opts, "uploadKbps") {
            config.upload_kbps = k.clamp(0.0, 1e7) as u32;
        }
        config.seed = u64::from_le_bytes(util::random_bytes());
        let mut latency = LatencyConfig::default();
        let fixed_target = opt_f64(&opts, "targetLatencyMs");
        if let Some(ms) = fixed_target {
            latency.target = (ms / 1000.0).clamp(0.2, 30.0);
        }
        let local = PeerId(util::random_bytes());
        let role = match key {
            Some(key) => NodeRole::Source { key },
            None => NodeRole::Viewer { stream },
        };
        #[allow(unused_mut)] // set only by a test hook
        let mut node_config = NodeConfig::new(role, trackers, local, config);
        #[cfg(feature = "test-hooks")]
        {
            node_config.tracker_conn_limit =
                opt_f64(&opts, "testTrackerLimit").map(|n| n.max(0.0) as usize);
        }
        let node = Node::new(node_config, u64::from_le_bytes(util::random_bytes()));
        let on_event = util::get(&opts, "onEvent")
            .dyn_into::<js_sys::Function>()
            .ok();
        let inner = Rc::new_cyclic(|me: &WeakDriver| {
            Shared::new(Driver {
                me: me.clone(),
                node,
                origin_ms: util::now_ms(),
                rtc: Rtc::new(Sink::new(me.clone()), ice_servers),
                sockets: Sockets::new(Sink::new(me.clone())),
                player: video.map(|v| Player::new(v, me.clone(), latency, fixed_target.is_none())),
                on_event,
                events: Vec::new(),
                node_timer: None,
                node_timer_cb: None,
                tick_cb: None,
                tick_handle: None,
                pagehide_cb: None,
                visible_cb: None,
                started: false,
                destroyed: false,
                #[cfg(feature = "test-hooks")]
                test_corrupt: util::get(&opts, "testCorrupt").is_truthy(),
                rates: Rates::default(),
                state: ("idle", String::new()),
                fatal: None,
            })
        });
        Ok(SwarmPeer { inner })
    }

    /// Starts connecting: tracker sockets, the housekeeping tick, `stopped` on page hide.
    pub fn start(&self) {
        if self.run(|d| d.start()).is_none() {
            super::queue::with(&Rc::downgrade(&self.inner), |d| d.start());
        }
    }

    /// The stream id (URL-safe base64).
    #[wasm_bindgen(js_name = streamId)]
    pub fn stream_id(&self) -> String {
        self.run(|d| d.node.stream().to_string())
            .unwrap_or_default()
    }

    /// This peer's id, as hex of its first bytes (for logs).
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.run(|d| d.node.local_id().to_string())
            .unwrap_or_default()
    }

    /// Source: publishes (a new version of) the init segment; returns its version.
    #[wasm_bindgen(js_name = publishInit)]
    pub fn publish_init(&self, mime: &str, data: &[u8]) -> Result<u32, JsError> {
        self.run(|d| {
            if d.destroyed {
                return Err(JsError::new("peer destroyed"));
            }
            let now = d.now();
            let r = d.node.publish_init(now, mime, data.to_vec());
            d.pump();
            r.map_err(|e| JsError::new(&e.to_string()))
        })
        .unwrap_or_else(|| {
            Err(JsError::new(
                "peer busy: called from inside one of its callbacks",
            ))
        })
    }

    /// The largest segment `publishSegment` takes, in bytes: a broadcaster page checks its
    /// settings against it before going live.
    #[wasm_bindgen(js_name = maxSegmentBytes)]
    pub fn max_segment_bytes() -> u32 {
        (MAX_PIECES_PER_SEGMENT * PIECE_SIZE) as u32
    }

    /// Source: publishes the next media segment; returns its sequence number. `pts_us` is the
    /// first frame's capture wall-clock time in µs since the Unix epoch.
    #[wasm_bindgen(js_name = publishSegment)]
    pub fn publish_segment(
        &self,
        pts_us: f64,
        duration_us: f64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<f64, JsError> {
        let meta = SegmentMeta {
            pts_us: pts_us.max(0.0) as u64,
            duration_us: duration_us.clamp(0.0, u32::MAX as f64) as u32,
            keyframe,
        };
        self.run(|d| {
            if d.destroyed {
                return Err(JsError::new("peer destroyed"));
            }
            let now = d.now();
            let r = d.node.publish_segment(now, meta, data.to_vec());
            d.pump();
            r.map(|seq| seq as f64)
                .map_err(|e| JsError::new(&e.to_string()))
        })
        .unwrap_or_else(|| {
            Err(JsError::new(
                "peer busy: called from inside one of its callbacks",
            ))
        })
    }

    /// Test hook: makes the player start over as after a decode error (new MediaSource,
    /// playback resumes at the next keyframe segment).
    #[cfg(feature = "test-hooks")]
    #[wasm_bindgen(js_name = testReinit)]
    pub fn test_reinit(&self) {
        super::queue::with(&Rc::downgrade(&self.inner), |d| {
            if let Some(p) = d.player.as_mut() {
                p.reinit("test hook");
            }
        });
    }

    /// Current figures as a plain object (see the COMMON contract for the field names).
    pub fn stats(&self) -> JsValue {
        match self.inner.driver.try_borrow() {
            Ok(d) => d.stats().into(),
            Err(_) => JsValue::NULL,
        }
    }

    /// Leaves the swarm: `stopped` to the trackers, every connection closed, the player torn down.
    pub fn destroy(&self) {
        if self.run(|d| d.destroy()).is_none() {
            super::queue::with(&Rc::downgrade(&self.inner), |d| d.destroy());
        }
    }
}
