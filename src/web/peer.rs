//! [`SwarmPeer`]: the page-facing object, and the [`Driver`] behind it that owns the swarm core
//! and every browser resource (connections, tracker sockets, player, timers).
//!
//! Every browser callback holds only a `Weak` to the driver and enters through [`with`], which
//! borrows the driver, runs the handler, and then fires page callbacks after the borrow ends (so
//! a page callback may call back into `SwarmPeer`). After each input the driver drains
//! `poll_output()` completely and re-arms one `setTimeout` for `poll_timeout()`.

use super::player::Player;
use super::rtc::Rtc;
use super::tracker::Tracker;
use super::util::{self, Callback};
use crate::client::playback::LatencyConfig;
use crate::client::status::{page_state, Facts};
use crate::core::{
    Config, Input, Instant, Output, PeerId, SegmentMeta, StreamId, StreamKey, Swarm,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::{Rc, Weak};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

pub(crate) type WeakDriver = Weak<RefCell<Driver>>;

/// Most rounds of "report bufferedAmount, drain again" after one input: the core stops sending
/// once a transport holds enough, this only bounds a misbehaving loop.
const MAX_PUMP_ROUNDS: usize = 8;

/// No media for this long: the broadcast is considered not (or no longer) on air.
const MEDIA_SILENCE_MS: f64 = 8_000.0;

/// After playing, no media for this long: the viewer rejoins the swarm from scratch (new peer
/// id, new core state). A restarted broadcaster numbers its segments from 0 again; the core
/// notices as soon as one of the new session's headers reaches it
/// ([`Output::SourceRestarted`]), and this is the fallback when none does.
const REJOIN_AFTER_SILENCE_MS: f64 = 12_000.0;

/// Everything one peer runs. Lives in an `Rc<RefCell<_>>` owned by [`SwarmPeer`].
pub(crate) struct Driver {
    pub(crate) me: WeakDriver,
    pub(crate) swarm: Swarm,
    pub(crate) local: PeerId,
    pub(crate) info_hash: [u8; 20],
    pub(crate) is_source: bool,
    origin_ms: f64,
    pub(crate) ice_servers: JsValue,
    pub(crate) rtc: Rtc,
    pub(crate) trackers: Vec<Tracker>,
    pub(crate) player: Option<Player>,
    on_event: Option<js_sys::Function>,
    /// Page callbacks queued while the driver is borrowed; fired by [`with`].
    events: Vec<(&'static str, JsValue)>,
    core_timer: Option<(i32, Instant)>,
    core_timer_cb: Option<Closure<dyn FnMut()>>,
    tick_cb: Option<Closure<dyn FnMut()>>,
    tick_handle: Option<i32>,
    pagehide_cb: Option<Callback>,
    /// A tab coming back to the foreground is re-synced at once (its timers were throttled
    /// while hidden, so the next tick could be a second away).
    visible_cb: Option<Callback>,
    started: bool,
    pub(crate) destroyed: bool,
    #[cfg(feature = "test-hooks")]
    test_corrupt: bool,
    /// Test hook: at most this many connections set up through trackers, so that the rest
    /// must come through the core's relay (peer exchange).
    #[cfg(feature = "test-hooks")]
    pub(crate) test_tracker_limit: Option<usize>,
    rates: Rates,
    state: (&'static str, String),
    fatal: Option<(&'static str, String)>,
    last_media_ms: Option<f64>,
    ever_media: bool,
    /// Segments were played since the last (re)join.
    had_play: bool,
    /// The core reported [`Output::SourceRestarted`]: rejoin once its outputs are drained.
    rejoin_pending: bool,
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

/// Runs `f` on the driver behind `weak` (if it still exists and is not destroyed), then fires
/// the page callbacks `f` queued, outside the borrow.
pub(crate) fn with<R>(weak: &WeakDriver, f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    let rc = weak.upgrade()?;
    let (r, events, cb) = {
        let mut d = rc.try_borrow_mut().ok()?;
        if d.destroyed {
            return None;
        }
        let r = f(&mut d);
        (r, std::mem::take(&mut d.events), d.on_event.clone())
    };
    if let Some(cb) = cb {
        for (kind, detail) in events {
            let _ = cb.call2(&JsValue::NULL, &JsValue::from_str(kind), &detail);
        }
    }
    Some(r)
}

impl Driver {
    /// Microseconds since this peer started, as the core's clock.
    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(((util::now_ms() - self.origin_ms).max(0.0) * 1000.0) as u64)
    }

    /// Feeds one input to the core and carries out everything it asks for.
    pub(crate) fn input(&mut self, input: Input<'_>) {
        let now = self.now();
        self.swarm.handle_input(now, input);
        self.pump();
    }

    /// Tells the core how many bytes each listed transport still holds.
    fn report_backlogs(&mut self, backlogs: Vec<(PeerId, usize)>) {
        let now = self.now();
        for (peer, bytes) in backlogs {
            self.swarm
                .handle_input(now, Input::Buffered { peer, bytes });
        }
    }

    /// Drains the core's outputs, reports the resulting transport backlog, and re-arms the timer.
    pub(crate) fn pump(&mut self) {
        for _ in 0..MAX_PUMP_ROUNDS {
            let mut touched = BTreeSet::new();
            while let Some(out) = self.swarm.poll_output() {
                self.apply(out, &mut touched);
            }
            let backlog: Vec<(PeerId, usize)> = touched
                .into_iter()
                .filter_map(|p| self.rtc.buffered(&p).map(|b| (p, b)))
                .collect();
            if backlog.is_empty() {
                break;
            }
            self.report_backlogs(backlog);
        }
        if std::mem::take(&mut self.rejoin_pending) {
            // Not from inside the drain loop: rejoining replaces the core being drained.
            return self.rejoin();
        }
        self.arm_core_timer();
    }

    fn apply(&mut self, out: Output, touched: &mut BTreeSet<PeerId>) {
        match out {
            Output::Transmit { peer, data } => {
                #[cfg(feature = "test-hooks")]
                let data = if self.test_corrupt {
                    bytes::Bytes::from(crate::client::test_hooks::corrupt_transmit(data.to_vec()))
                } else {
                    data
                };
                if self.rtc.send(&peer, &data) {
                    touched.insert(peer);
                } else {
                    // The channel died under us; the core hears it as a disconnect.
                    self.drop_peer(&peer, true);
                }
            }
            Output::Disconnect { peer, reason } => {
                util::debug(&format!("disconnect {peer}: {reason:?}"));
                self.drop_peer(&peer, false);
            }
            Output::Init(init) => {
                self.ever_media = true;
                if let Some(p) = self.player.as_mut() {
                    if let Err(msg) = p.on_init(init) {
                        self.fail("codec", msg);
                    }
                }
            }
            Output::Play(seg) => {
                self.last_media_ms = Some(util::now_ms());
                self.ever_media = true;
                self.had_play = true;
                if let Some(p) = self.player.as_mut() {
                    p.on_segment(seg);
                }
            }
            Output::Skip { seq } => {
                if let Some(p) = self.player.as_mut() {
                    p.on_skip(seq);
                }
            }
            Output::Connect { peer } => self.connect_via_relay(peer),
            Output::Signal { from, payload } => self.on_relayed_signal(from, payload),
            Output::SourceRestarted => {
                util::warn("the broadcaster restarted the stream: rejoining");
                self.rejoin_pending = true;
            }
        }
    }

    fn arm_core_timer(&mut self) {
        let want = self.swarm.poll_timeout();
        if self.core_timer.map(|(_, at)| at) == want {
            return;
        }
        if let Some((h, _)) = self.core_timer.take() {
            util::window().clear_timeout_with_handle(h);
        }
        let (Some(at), Some(cb)) = (want, self.core_timer_cb.as_ref()) else {
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
            self.core_timer = Some((h, at));
        }
    }

    fn on_core_timer(&mut self) {
        self.core_timer = None;
        self.input(Input::Timeout);
    }

    /// How many more connections the trackers may set up (unlimited without the test hook).
    pub(crate) fn tracker_room(&self) -> usize {
        #[cfg(feature = "test-hooks")]
        if let Some(limit) = self.test_tracker_limit {
            return limit.saturating_sub(self.rtc.via_tracker());
        }
        usize::MAX
    }

    /// Queues a page event (`state`, `error`).
    pub(crate) fn emit(&mut self, kind: &'static str, detail: JsValue) {
        self.events.push((kind, detail));
    }

    /// A failure the viewer cannot recover from by waiting: shown in the player, and
    /// the `error` event.
    pub(crate) fn fail(&mut self, code: &'static str, message: String) {
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

    /// The 250 ms housekeeping tick: tracker reconnects and re-announces, stale offers, player
    /// control, rates, state.
    fn tick(&mut self) {
        let now = util::now_ms();
        self.tracker_tick(now);
        self.rtc_tick(now);
        // Safety net under `bufferedamountlow`: the core's view of every backlog is at most one
        // tick old, whatever events were missed.
        let backlogs = self.rtc.backlogs();
        if !backlogs.is_empty() {
            self.report_backlogs(backlogs);
            self.pump();
        }
        let media_fresh = self
            .last_media_ms
            .is_some_and(|t| now - t < MEDIA_SILENCE_MS);
        if let Some(p) = self.player.as_mut() {
            if let Err(msg) = p.tick(now, media_fresh) {
                self.fail("decode", msg);
            }
        }
        if let Some(pts_us) = self.player.as_ref().and_then(|p| p.playhead_pts_us()) {
            self.input(Input::Playhead { pts_us });
        }
        if !self.is_source
            && self.had_play
            && self
                .last_media_ms
                .is_none_or(|t| now - t > REJOIN_AFTER_SILENCE_MS)
        {
            util::warn("no media for a while: rejoining the swarm");
            self.rejoin();
        }
        if now - self.rates.at_ms >= 1000.0 {
            let s = self.swarm.stats();
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

    /// Starts over as a new viewer of the same stream: every connection closed, a fresh core
    /// with a fresh peer id, trackers re-announced, the player waiting for a new init segment.
    fn rejoin(&mut self) {
        // Not closed at once: the last messages (the new session's header, passed on to the
        // neighbours) must still go out.
        self.rtc.retire_all(util::now_ms());
        self.local = PeerId(util::random_bytes());
        let seed = u64::from_le_bytes(util::random_bytes());
        self.swarm = self.swarm.rejoin(self.local, seed);
        for t in &mut self.trackers {
            t.restart();
        }
        if let Some(p) = self.player.as_mut() {
            p.forget_stream();
        }
        self.had_play = false;
        self.pump();
    }

    /// Recomputes the page-visible state and emits `state` when it changed.
    fn update_state(&mut self) {
        let now = util::now_ms();
        let facts = Facts {
            destroyed: self.destroyed,
            fatal: self.fatal.as_ref().map(|(_, m)| m.clone()),
            is_source: self.is_source,
            media_fresh: self
                .last_media_ms
                .is_some_and(|t| now - t < MEDIA_SILENCE_MS),
            ever_media: self.ever_media,
            playing: self.player.as_ref().is_some_and(|p| p.is_playing()),
            trackers: self.trackers.len(),
            trackers_open: self.trackers.iter().filter(|t| t.is_open()).count(),
            trackers_failing: self.trackers.iter().all(|t| t.failures > 0),
            neighbours: self.swarm.stats().neighbours,
            capacity_short: self.swarm.stats().capacity_short,
        };
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
        let s = self.swarm.stats();
        let o = js_sys::Object::new();
        util::set(&o, "state", self.state.0);
        util::set(&o, "message", self.state.1.as_str());
        util::set(&o, "role", if self.is_source { "source" } else { "viewer" });
        util::set(&o, "peerId", self.local.to_string());
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
            self.trackers.iter().filter(|t| t.is_open()).count() as f64,
        );
        util::set(&o, "connections", self.rtc.len() as f64);
        util::set(&o, "connectionsOpen", self.rtc.open_count() as f64);
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
        self.stop_trackers();
        // Goodbyes to the neighbours, so they replace us at once rather than on a timeout.
        let now = self.now();
        self.swarm.close(now);
        while let Some(out) = self.swarm.poll_output() {
            if let Output::Transmit { peer, data } = out {
                self.rtc.send(&peer, &data);
            }
        }
        self.rtc.close_all();
        if let Some(p) = self.player.as_mut() {
            p.close();
        }
        let w = util::window();
        if let Some((h, _)) = self.core_timer.take() {
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
    inner: Rc<RefCell<Driver>>,
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
        let is_source = key.is_some();
        let swarm = match key {
            Some(k) => Swarm::source(config, k, local),
            None => Swarm::viewer(config, stream, local),
        };
        let on_event = util::get(&opts, "onEvent")
            .dyn_into::<js_sys::Function>()
            .ok();
        let inner = Rc::new_cyclic(|me: &WeakDriver| {
            RefCell::new(Driver {
                me: me.clone(),
                swarm,
                local,
                info_hash: stream.info_hash(),
                is_source,
                origin_ms: util::now_ms(),
                ice_servers,
                rtc: Rtc::default(),
                trackers: trackers.into_iter().map(Tracker::new).collect(),
                player: video.map(|v| Player::new(v, me.clone(), latency, fixed_target.is_none())),
                on_event,
                events: Vec::new(),
                core_timer: None,
                core_timer_cb: None,
                tick_cb: None,
                tick_handle: None,
                pagehide_cb: None,
                visible_cb: None,
                started: false,
                destroyed: false,
                #[cfg(feature = "test-hooks")]
                test_corrupt: util::get(&opts, "testCorrupt").is_truthy(),
                #[cfg(feature = "test-hooks")]
                test_tracker_limit: opt_f64(&opts, "testTrackerLimit").map(|n| n.max(0.0) as usize),
                rates: Rates::default(),
                state: ("idle", String::new()),
                fatal: None,
                last_media_ms: None,
                ever_media: false,
                had_play: false,
                rejoin_pending: false,
            })
        });
        Ok(SwarmPeer { inner })
    }

    /// Starts connecting: tracker sockets, the housekeeping tick, `stopped` on page hide.
    pub fn start(&self) {
        let weak = Rc::downgrade(&self.inner);
        with(&weak, |d| {
            if d.started {
                return;
            }
            d.started = true;
            let w = weak.clone();
            d.core_timer_cb = Some(Closure::wrap(Box::new(move || {
                with(&w, |d| d.on_core_timer());
            }) as Box<dyn FnMut()>));
            let w = weak.clone();
            let tick = Closure::wrap(Box::new(move || {
                with(&w, |d| d.tick());
            }) as Box<dyn FnMut()>);
            d.tick_handle = util::window()
                .set_interval_with_callback_and_timeout_and_arguments_0(
                    tick.as_ref().unchecked_ref(),
                    250,
                )
                .ok();
            d.tick_cb = Some(tick);
            let w = weak.clone();
            let hide = util::callback(move |ev: JsValue| {
                // `persisted`: the page may come back from the back/forward cache; keep the
                // connections. Otherwise it is unloading: say goodbye so neighbours replace us
                // now rather than when ICE times out (10–30 s).
                let persisted = util::get(&ev, "persisted").is_truthy();
                with(&w, |d| {
                    if persisted {
                        d.stop_trackers();
                    } else {
                        d.destroy();
                    }
                });
            });
            let _ = util::window()
                .add_event_listener_with_callback("pagehide", hide.as_ref().unchecked_ref());
            d.pagehide_cb = Some(hide);
            let w = weak.clone();
            let visible = util::callback(move |_| {
                let shown = util::window().document().is_some_and(|d| !d.hidden());
                if shown {
                    with(&w, |d| d.tick());
                }
            });
            if let Some(doc) = util::window().document() {
                let _ = doc.add_event_listener_with_callback(
                    "visibilitychange",
                    visible.as_ref().unchecked_ref(),
                );
            }
            d.visible_cb = Some(visible);
            if let Some(p) = d.player.as_mut() {
                p.attach();
            }
            d.tick();
        });
    }

    /// The stream id (URL-safe base64).
    #[wasm_bindgen(js_name = streamId)]
    pub fn stream_id(&self) -> String {
        self.inner.borrow().swarm.stream().to_string()
    }

    /// This peer's id, as hex of its first bytes (for logs).
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.inner.borrow().local.to_string()
    }

    /// Source: publishes (a new version of) the init segment; returns its version.
    #[wasm_bindgen(js_name = publishInit)]
    pub fn publish_init(&self, mime: &str, data: &[u8]) -> Result<u32, JsError> {
        let weak = Rc::downgrade(&self.inner);
        with(&weak, |d| {
            let now = d.now();
            let r = d.swarm.publish_init(now, mime, data.to_vec());
            d.pump();
            r.map_err(|e| JsError::new(&e.to_string()))
        })
        .unwrap_or_else(|| Err(JsError::new("peer destroyed")))
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
        let weak = Rc::downgrade(&self.inner);
        with(&weak, |d| {
            let now = d.now();
            let r = d.swarm.publish_segment(now, meta, data.to_vec());
            d.pump();
            r.map(|seq| seq as f64)
                .map_err(|e| JsError::new(&e.to_string()))
        })
        .unwrap_or_else(|| Err(JsError::new("peer destroyed")))
    }

    /// Test hook: makes the player start over as after a decode error (new MediaSource,
    /// playback resumes at the next keyframe segment).
    #[cfg(feature = "test-hooks")]
    #[wasm_bindgen(js_name = testReinit)]
    pub fn test_reinit(&self) {
        let weak = Rc::downgrade(&self.inner);
        with(&weak, |d| {
            if let Some(p) = d.player.as_mut() {
                p.reinit("test hook");
            }
        });
    }

    /// Current figures as a plain object (see the COMMON contract for the field names).
    pub fn stats(&self) -> JsValue {
        match self.inner.try_borrow() {
            Ok(d) => d.stats().into(),
            Err(_) => JsValue::NULL,
        }
    }

    /// Leaves the swarm: `stopped` to the trackers, every connection closed, the player torn down.
    pub fn destroy(&self) {
        let weak = Rc::downgrade(&self.inner);
        with(&weak, |d| d.destroy());
        let cb = self.inner.borrow().on_event.clone();
        let events = std::mem::take(&mut self.inner.borrow_mut().events);
        if let Some(cb) = cb {
            for (kind, detail) in events {
                let _ = cb.call2(&JsValue::NULL, &JsValue::from_str(kind), &detail);
            }
        }
    }
}
