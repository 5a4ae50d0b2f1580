//! WebRTC transport: one `RTCPeerConnection` with one ordered, reliable data channel per
//! neighbour. Offers and answers carry all ICE candidates (gathering capped at
//! [`GATHER_CAP_MS`]), because both signalling paths, the tracker and the core's relay, carry
//! one message each way.

use super::peer::{with, Driver, WeakDriver};
use super::util::{self, callback, func, Callback};
use crate::client::links::{keep_newer_duplicate, yield_to_crossing_offer};
use crate::client::tracker::SignalPayload;
use crate::core::{Input, PeerId};
use std::collections::HashMap;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit,
    RtcDataChannelState, RtcDataChannelType, RtcIceGatheringState, RtcPeerConnection,
    RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

/// How long an offer or answer waits for ICE candidates. With no ICE servers, host candidates
/// gather in milliseconds; with an unreachable STUN server this bounds the wait.
const GATHER_CAP_MS: i32 = 1000;

/// `bufferedamountlow` fires when the channel's backlog drops to this, and the core learns it
/// has room again. It must sit below the core's transport budgets (all transports together hold
/// ~30 ms of upload, at least one 16 KiB message): the event only fires on a crossing from above,
/// and at 64 KiB it never fired, so the core saw each backlog only when it next sent on that
/// channel and fed transports in 100 ms ticks (a swarm of free riders got ~60% of the source's
/// cap). Half a message: a channel holding one full piece message reports as it drains.
const LOW_WATER: u32 = 8 * 1024;

/// A connection that never opened is given up after this long.
const SETUP_TIMEOUT_MS: f64 = 20_000.0;

/// A connection attempt older than this that has not opened gives way to a fresh offer between
/// the same two peers. Attempts open in well under a second on a LAN; a relayed offer between
/// two browsers sometimes never connects, and while it waited out [`SETUP_TIMEOUT_MS`] it kept
/// the pair from connecting any other way: viewers whose bridge to the source died stalled
/// 10-11 s with the source answering nobody (departure-bridge e2e in CI).
const STUCK_SETUP_MS: f64 = 3_000.0;

/// A connection ICE calls "disconnected" for this long is closed: a neighbour whose tab was
/// killed never closes its channels, and waiting for ICE to declare "failed" takes far longer
/// than a live stream's buffer.
const DISCONNECTED_GRACE_MS: f64 = 3_000.0;

/// A tracker offer nobody answered is given up after this long: trackers forward offers at
/// once, so an answer that has not come by then will not come.
const OFFER_TIMEOUT_MS: f64 = 10_000.0;

/// How long a connection given up by a rejoin stays open for its channel to send what it holds.
const RETIRE_MS: f64 = 1_000.0;

/// How a connection was set up (where its answer goes or comes from).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Via {
    /// Offer or answer through tracker number `.0`.
    Tracker(usize),
    /// Through a common neighbour ([`crate::core::Output::Signal`]).
    Relay,
}

/// One connection attempt or established neighbour.
pub(crate) struct Conn {
    pc: RtcPeerConnection,
    dc: Option<RtcDataChannel>,
    /// Known at once for answers and relayed offers; for tracker offers when the answer comes.
    pub(crate) peer: Option<PeerId>,
    /// This side made the offer.
    offerer: bool,
    /// The core was told [`Input::Connected`].
    open: bool,
    pub(crate) via: Via,
    created_ms: f64,
    /// The offerer has applied the answer.
    answered: bool,
    /// Since when ICE says "disconnected" (no answer to its consent checks).
    disconnected_ms: Option<f64>,
    closures: Vec<Callback>,
}

impl Conn {
    /// An attempt that has not opened in [`STUCK_SETUP_MS`]: a fresh offer between the same
    /// two peers takes its place.
    fn stuck(&self, now_ms: f64) -> bool {
        !self.open && now_ms - self.created_ms > STUCK_SETUP_MS
    }
}

/// All connections of one peer.
#[derive(Default)]
pub(crate) struct Rtc {
    conns: HashMap<u64, Conn>,
    by_peer: HashMap<PeerId, u64>,
    /// Our tracker offers awaiting an answer, by `offer_id` (binary string).
    pub(crate) by_offer: HashMap<String, u64>,
    next: u64,
    /// Callbacks of closed connections, freed at the next tick (never while one may be running).
    graveyard: Vec<Callback>,
    /// Connections given up by a rejoin whose channels are closing: each `RTCPeerConnection` is
    /// closed only at the given time, so that what was sent last (the new session's header,
    /// passed on to neighbours that have not noticed the restart) still goes out. Closing the
    /// connection at once discards whatever its channel still holds.
    retiring: Vec<(f64, RtcPeerConnection)>,
}

impl Rtc {
    /// `bufferedAmount` of the open channel to `peer`.
    pub(crate) fn buffered(&self, peer: &PeerId) -> Option<usize> {
        let c = self.conns.get(self.by_peer.get(peer)?)?;
        c.dc.as_ref().map(|d| d.buffered_amount() as usize)
    }

    /// Sends one message to `peer`; `false` when there is no open channel or sending failed.
    pub(crate) fn send(&self, peer: &PeerId, data: &[u8]) -> bool {
        let Some(c) = self.by_peer.get(peer).and_then(|id| self.conns.get(id)) else {
            return false;
        };
        match &c.dc {
            Some(dc) if dc.ready_state() == RtcDataChannelState::Open => {
                dc.send_with_u8_array(data).is_ok()
            }
            _ => false,
        }
    }

    /// Number of connections, set up or open.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// `bufferedAmount` of every channel the core was told is open.
    pub(crate) fn backlogs(&self) -> Vec<(PeerId, usize)> {
        self.conns
            .values()
            .filter(|c| c.open)
            .filter_map(|c| Some((c.peer?, c.dc.as_ref()?.buffered_amount() as usize)))
            .collect()
    }

    /// Connections whose data channel the core was told is open (dead ones count until closed).
    pub(crate) fn open_count(&self) -> usize {
        self.conns.values().filter(|c| c.open).count()
    }

    /// Connections (open or being set up) made through a tracker.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn via_tracker(&self) -> usize {
        self.conns
            .values()
            .filter(|c| matches!(c.via, Via::Tracker(_)))
            .count()
    }

    /// Whether connection `id` still exists.
    pub(crate) fn exists(&self, id: u64) -> bool {
        self.conns.contains_key(&id)
    }

    /// Whether any connection (open or being set up) exists to `peer`.
    pub(crate) fn has_peer(&self, peer: &PeerId) -> bool {
        self.by_peer.contains_key(peer)
    }

    fn close_conn(&mut self, id: u64) -> Option<Conn> {
        let c = self.detach_conn(id)?;
        c.pc.close();
        Some(c)
    }

    /// Forgets connection `id` and silences its callbacks; its data channel starts closing
    /// (which sends what it still holds first); the connection itself is left to the caller.
    fn detach_conn(&mut self, id: u64) -> Option<Conn> {
        let mut c = self.conns.remove(&id)?;
        if let Some(p) = c.peer {
            if self.by_peer.get(&p) == Some(&id) {
                self.by_peer.remove(&p);
            }
        }
        self.by_offer.retain(|_, v| *v != id);
        if let Some(dc) = &c.dc {
            dc.set_onopen(None);
            dc.set_onmessage(None);
            dc.set_onclose(None);
            dc.set_onerror(None);
            dc.set_onbufferedamountlow(None);
            dc.close();
        }
        c.pc.set_onconnectionstatechange(None);
        c.pc.set_ondatachannel(None);
        self.graveyard.append(&mut c.closures);
        Some(c)
    }

    /// Gives up every connection (rejoin): the channels close at once, after sending what they
    /// hold; the connections are closed [`RETIRE_MS`] later by [`Rtc::close_retired`].
    pub(crate) fn retire_all(&mut self, now: f64) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.detach_conn(id) {
                self.retiring.push((now + RETIRE_MS, c.pc));
            }
        }
    }

    /// Closes the retiring connections that are due (all of them with `now` = infinity).
    fn close_retired(&mut self, now: f64) {
        self.retiring.retain(|(at, pc)| {
            if *at <= now {
                pc.close();
                false
            } else {
                true
            }
        });
    }

    /// Closes everything (page leaving).
    pub(crate) fn close_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.close_conn(id);
        }
        self.close_retired(f64::INFINITY);
    }
}

/// `{type, sdp}` for `setLocalDescription` / `setRemoteDescription`.
fn description(kind: RtcSdpType, sdp: &str) -> RtcSessionDescriptionInit {
    let d = RtcSessionDescriptionInit::new(kind);
    d.set_sdp(sdp);
    d
}

fn pc_of(weak: &WeakDriver, id: u64) -> Option<RtcPeerConnection> {
    with(weak, |d| d.rtc.conns.get(&id).map(|c| c.pc.clone())).flatten()
}

/// Waits until ICE gathering completes or [`GATHER_CAP_MS`] passed; returns the local SDP.
async fn gathered_sdp(pc: &RtcPeerConnection) -> Option<String> {
    let mut waited = 0;
    while pc.ice_gathering_state() != RtcIceGatheringState::Complete && waited < GATHER_CAP_MS {
        util::sleep(20).await;
        waited += 20;
    }
    pc.local_description().map(|d| d.sdp())
}

/// createOffer + setLocalDescription + gather, on connection `id`.
pub(crate) async fn make_offer(weak: &WeakDriver, id: u64) -> Option<String> {
    let pc = pc_of(weak, id)?;
    let offer = JsFuture::from(pc.create_offer()).await.ok()?;
    let sdp = util::get(&offer, "sdp").as_string()?;
    JsFuture::from(pc.set_local_description(&description(RtcSdpType::Offer, &sdp)))
        .await
        .ok()?;
    gathered_sdp(&pc).await
}

/// setRemoteDescription(offer) + createAnswer + setLocalDescription + gather.
async fn make_answer(weak: &WeakDriver, id: u64, offer_sdp: &str) -> Option<String> {
    let pc = pc_of(weak, id)?;
    JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Offer, offer_sdp)))
        .await
        .ok()?;
    let answer = JsFuture::from(pc.create_answer()).await.ok()?;
    let sdp = util::get(&answer, "sdp").as_string()?;
    JsFuture::from(pc.set_local_description(&description(RtcSdpType::Answer, &sdp)))
        .await
        .ok()?;
    gathered_sdp(&pc).await
}

impl Driver {
    /// A new connection. The offerer creates the data channel; the answerer receives it.
    pub(crate) fn new_conn(
        &mut self,
        peer: Option<PeerId>,
        offerer: bool,
        via: Via,
    ) -> Option<u64> {
        let cfg = RtcConfiguration::new();
        cfg.set_ice_servers(&self.ice_servers);
        let pc = match RtcPeerConnection::new_with_configuration(&cfg) {
            Ok(pc) => pc,
            Err(e) => {
                util::warn(&format!("RTCPeerConnection failed: {e:?}"));
                return None;
            }
        };
        let id = self.rtc.next;
        self.rtc.next += 1;
        let w = self.me.clone();
        let on_state = callback(move |_| {
            with(&w, |d| d.on_pc_state(id));
        });
        pc.set_onconnectionstatechange(func(&on_state));
        let mut closures = vec![on_state];
        if !offerer {
            let w = self.me.clone();
            let on_dc = callback(move |ev: JsValue| {
                if let Ok(ev) = ev.dyn_into::<RtcDataChannelEvent>() {
                    with(&w, |d| d.attach_channel(id, ev.channel()));
                }
            });
            pc.set_ondatachannel(func(&on_dc));
            closures.push(on_dc);
        }
        self.rtc.conns.insert(
            id,
            Conn {
                pc: pc.clone(),
                dc: None,
                peer,
                offerer,
                open: false,
                via,
                created_ms: util::now_ms(),
                answered: false,
                disconnected_ms: None,
                closures,
            },
        );
        if let Some(p) = peer {
            self.rtc.by_peer.insert(p, id);
        }
        if offerer {
            let init = RtcDataChannelInit::new();
            init.set_ordered(true);
            let dc = pc.create_data_channel_with_data_channel_dict("swarmcast", &init);
            self.attach_channel(id, dc);
        }
        Some(id)
    }

    fn attach_channel(&mut self, id: u64, dc: RtcDataChannel) {
        let me = self.me.clone();
        let Some(c) = self.rtc.conns.get_mut(&id) else {
            dc.close();
            return;
        };
        if c.dc.is_some() {
            // One channel per connection; a second is not ours.
            dc.close();
            return;
        }
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        dc.set_buffered_amount_low_threshold(LOW_WATER);
        let w = me.clone();
        let on_open = callback(move |_| {
            with(&w, |d| d.on_channel_open(id));
        });
        let w = me.clone();
        let on_message = callback(move |ev: JsValue| {
            let Ok(ev) = ev.dyn_into::<MessageEvent>() else {
                return;
            };
            let data = ev.data();
            // Text frames are not part of the protocol; the core only sees binary messages.
            if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
                let bytes = js_sys::Uint8Array::new(buf).to_vec();
                with(&w, |d| d.on_channel_message(id, &bytes));
            }
        });
        let w = me.clone();
        let on_close = callback(move |_| {
            with(&w, |d| d.close_conn(id, true));
        });
        let w = me;
        let on_low = callback(move |_| {
            with(&w, |d| d.on_channel_low(id));
        });
        dc.set_onopen(func(&on_open));
        dc.set_onmessage(func(&on_message));
        dc.set_onclose(func(&on_close));
        dc.set_onerror(func(&on_close));
        dc.set_onbufferedamountlow(func(&on_low));
        c.closures.extend([on_open, on_message, on_close, on_low]);
        let already_open = dc.ready_state() == RtcDataChannelState::Open;
        c.dc = Some(dc);
        if already_open {
            self.on_channel_open(id);
        }
    }

    fn on_channel_open(&mut self, id: u64) {
        let Some(c) = self.rtc.conns.get_mut(&id) else {
            return;
        };
        let Some(peer) = c.peer else { return };
        if c.open || self.rtc.by_peer.get(&peer) != Some(&id) {
            return;
        }
        c.open = true;
        util::debug(&format!("connected to {peer} via {:?}", c.via));
        self.input(Input::Connected { peer });
    }

    fn on_channel_message(&mut self, id: u64, data: &[u8]) {
        let Some(c) = self.rtc.conns.get(&id) else {
            return;
        };
        if let (true, Some(peer)) = (c.open, c.peer) {
            self.input(Input::Receive { peer, data });
        }
    }

    fn on_channel_low(&mut self, id: u64) {
        let Some(c) = self.rtc.conns.get(&id) else {
            return;
        };
        if let (true, Some(peer), Some(dc)) = (c.open, c.peer, c.dc.as_ref()) {
            let bytes = dc.buffered_amount() as usize;
            self.input(Input::Buffered { peer, bytes });
        }
    }

    fn on_pc_state(&mut self, id: u64) {
        let Some(c) = self.rtc.conns.get(&id) else {
            return;
        };
        match c.pc.connection_state() {
            RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed => {
                self.close_conn(id, true)
            }
            // "disconnected" may recover by itself; `rtc_tick` gives it DISCONNECTED_GRACE_MS.
            RtcPeerConnectionState::Disconnected => {
                if let Some(c) = self.rtc.conns.get_mut(&id) {
                    c.disconnected_ms.get_or_insert(util::now_ms());
                }
            }
            _ => {
                if let Some(c) = self.rtc.conns.get_mut(&id) {
                    c.disconnected_ms = None;
                }
            }
        }
    }

    /// Closes connection `id`; `tell_core` reports [`Input::Disconnected`] if the core knew it.
    pub(crate) fn close_conn(&mut self, id: u64, tell_core: bool) {
        let Some(c) = self.rtc.close_conn(id) else {
            return;
        };
        if let (true, true, Some(peer)) = (tell_core, c.open, c.peer) {
            util::debug(&format!("disconnected from {peer}"));
            self.input(Input::Disconnected { peer });
        }
    }

    /// Closes the connection to `peer`, if any.
    pub(crate) fn drop_peer(&mut self, peer: &PeerId, tell_core: bool) {
        if let Some(&id) = self.rtc.by_peer.get(peer) {
            self.close_conn(id, tell_core);
        }
    }

    /// Makes connection `id` the one to `peer`. When two exist (both sides offered at once),
    /// both ends keep the one offered by the smaller peer id, so they agree without talking.
    /// Returns whether `id` survived.
    pub(crate) fn claim(&mut self, id: u64, peer: PeerId) -> bool {
        let Some(other) = self.rtc.by_peer.get(&peer).copied() else {
            if let Some(c) = self.rtc.conns.get_mut(&id) {
                c.peer = Some(peer);
                self.rtc.by_peer.insert(peer, id);
                return true;
            }
            return false;
        };
        if other == id {
            return true;
        }
        let (Some(new), Some(old)) = (self.rtc.conns.get(&id), self.rtc.conns.get(&other)) else {
            return false;
        };
        if old.stuck(util::now_ms())
            || keep_newer_duplicate(self.local, peer, new.offerer, old.offerer)
        {
            self.close_conn(other, true);
            if let Some(c) = self.rtc.conns.get_mut(&id) {
                c.peer = Some(peer);
                self.rtc.by_peer.insert(peer, id);
                return true;
            }
            false
        } else {
            self.close_conn(id, false);
            false
        }
    }

    /// Closes an attempt to reach `peer` that has not opened in [`STUCK_SETUP_MS`], so that a
    /// fresh offer between the two can take its place.
    fn drop_stuck_attempt(&mut self, peer: &PeerId) {
        let Some(&id) = self.rtc.by_peer.get(peer) else {
            return;
        };
        let stuck = self
            .rtc
            .conns
            .get(&id)
            .is_some_and(|c| c.stuck(util::now_ms()));
        if stuck {
            util::debug(&format!(
                "a fresh offer replaces the stuck attempt to {peer}"
            ));
            self.close_conn(id, false);
        }
    }

    /// Whether to accept one more neighbour's offer.
    pub(crate) fn room_for(&self, peer: &PeerId) -> bool {
        *peer != self.local
            && !self.rtc.has_peer(peer)
            && self.rtc.len() < self.swarm.config().max_degree + 8
    }

    /// An answer to one of our tracker offers arrived.
    pub(crate) fn on_tracker_answer(&mut self, peer: PeerId, offer_id: &str, sdp: String) {
        let Some(id) = self.rtc.by_offer.remove(offer_id) else {
            return; // expired, or answered already through another tracker
        };
        if peer == self.local || !self.claim(id, peer) {
            return;
        }
        self.apply_answer(id, sdp);
    }

    fn apply_answer(&mut self, id: u64, sdp: String) {
        let Some(c) = self.rtc.conns.get_mut(&id) else {
            return;
        };
        if !c.offerer || c.answered {
            return;
        }
        c.answered = true;
        let pc = c.pc.clone();
        let weak = self.me.clone();
        spawn_local(async move {
            let r =
                JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Answer, &sdp)))
                    .await;
            if r.is_err() {
                with(&weak, |d| d.close_conn(id, true));
            }
        });
    }

    /// Answers `peer`'s offer; `reply` sends the answer SDP back the way the offer came.
    pub(crate) fn answer_offer(
        &mut self,
        peer: PeerId,
        sdp: String,
        via: Via,
        reply: impl FnOnce(&mut Driver, String) + 'static,
    ) {
        self.drop_stuck_attempt(&peer);
        if !self.room_for(&peer) {
            return;
        }
        let Some(id) = self.new_conn(Some(peer), false, via) else {
            return;
        };
        let weak = self.me.clone();
        spawn_local(async move {
            match make_answer(&weak, id, &sdp).await {
                Some(answer) => {
                    with(&weak, |d| {
                        if d.rtc.conns.contains_key(&id) {
                            reply(d, answer);
                        }
                    });
                }
                None => {
                    with(&weak, |d| d.close_conn(id, false));
                }
            }
        });
    }

    /// The core learned of `peer` (peer exchange) and wants a connection: offer through the
    /// neighbour that told us.
    pub(crate) fn connect_via_relay(&mut self, peer: PeerId) {
        if peer == self.local || self.rtc.has_peer(&peer) {
            return;
        }
        util::debug(&format!("offering to {peer} through the relay"));
        let Some(id) = self.new_conn(Some(peer), true, Via::Relay) else {
            return;
        };
        let weak = self.me.clone();
        spawn_local(async move {
            match make_offer(&weak, id).await {
                Some(sdp) => {
                    with(&weak, |d| {
                        if d.rtc.conns.contains_key(&id) {
                            let payload = SignalPayload::Offer(sdp).encode();
                            d.input(Input::SendSignal { to: peer, payload });
                        }
                    });
                }
                None => {
                    with(&weak, |d| d.close_conn(id, false));
                }
            }
        });
    }

    /// Signalling relayed by a neighbour from `from`.
    pub(crate) fn on_relayed_signal(&mut self, from: PeerId, payload: Vec<u8>) {
        let decoded = SignalPayload::decode(&payload);
        util::debug(&format!(
            "relayed {} from {from}",
            match &decoded {
                Some(SignalPayload::Offer(_)) => "offer",
                Some(SignalPayload::Answer(_)) => "answer",
                None => "junk",
            }
        ));
        match decoded {
            Some(SignalPayload::Offer(sdp)) => {
                if let Some(&existing) = self.rtc.by_peer.get(&from) {
                    // Both sides offered at once: the smaller id's offer wins on both ends.
                    let ours = self.rtc.conns.get(&existing);
                    let ours_pending = ours.is_some_and(|c| c.offerer && !c.open);
                    if ours_pending && yield_to_crossing_offer(self.local, from) {
                        self.close_conn(existing, false);
                    } else {
                        return;
                    }
                }
                self.answer_offer(from, sdp, Via::Relay, move |d, answer| {
                    let payload = SignalPayload::Answer(answer).encode();
                    d.input(Input::SendSignal { to: from, payload });
                });
            }
            Some(SignalPayload::Answer(sdp)) => {
                if let Some(&id) = self.rtc.by_peer.get(&from) {
                    self.apply_answer(id, sdp);
                }
            }
            None => util::debug(&format!("unintelligible relayed signal from {from}")),
        }
    }

    /// Gives up connections that never opened and frees dead callbacks.
    pub(crate) fn rtc_tick(&mut self, now: f64) {
        self.rtc.graveyard.clear();
        self.rtc.close_retired(now);
        let stale: Vec<u64> = self
            .rtc
            .conns
            .iter()
            .filter(|(_, c)| {
                let age = now - c.created_ms;
                let lost = c
                    .disconnected_ms
                    .is_some_and(|t| now - t > DISCONNECTED_GRACE_MS);
                lost || (!c.open
                    && (age > SETUP_TIMEOUT_MS || (c.peer.is_none() && age > OFFER_TIMEOUT_MS)))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.close_conn(id, true);
        }
    }
}
