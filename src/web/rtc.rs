//! WebRTC transport adapter: one `RTCPeerConnection` with one ordered, reliable data channel per
//! node connection ([`ConnId`]). It creates offers and answers when the node asks, moves bytes,
//! and reports what the browser says as node events; which connection to keep, when to give one
//! up and whom to offer to are the node's decisions ([`crate::client::node`]).
//!
//! Offers and answers carry all ICE candidates (gathering capped at [`GATHER_CAP_MS`]), because
//! both signalling paths, the tracker and the core's relay, carry one message each way.

use super::queue::Sink;
use super::util::{self, callback, func, Callback};
use crate::client::node::{ConnId, Event};
use bytes::Bytes;
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

/// How long a connection given up by a rejoin stays open for its channel to send what it holds.
const RETIRE_MS: f64 = 1_000.0;

/// The browser side of one node connection.
struct Conn {
    pc: RtcPeerConnection,
    dc: Option<RtcDataChannel>,
    closures: Vec<Callback>,
}

/// Every `RTCPeerConnection` of one peer, by the node's connection id.
pub(crate) struct Rtc {
    sink: Sink,
    ice_servers: JsValue,
    conns: HashMap<ConnId, Conn>,
    /// Callbacks of closed connections, freed at the next tick (never while one may be running).
    graveyard: Vec<Callback>,
    /// Connections given up by a rejoin whose channels are closing: each `RTCPeerConnection` is
    /// closed only at the given time, so that what was sent last (the new session's header,
    /// passed on to neighbours that have not noticed the restart) still goes out. Closing the
    /// connection at once discards whatever its channel still holds.
    retiring: Vec<(f64, RtcPeerConnection)>,
}

/// `{type, sdp}` for `setLocalDescription` / `setRemoteDescription`.
fn description(kind: RtcSdpType, sdp: &str) -> RtcSessionDescriptionInit {
    let d = RtcSessionDescriptionInit::new(kind);
    d.set_sdp(sdp);
    d
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

/// createOffer + setLocalDescription + gather.
async fn make_offer(pc: RtcPeerConnection) -> Option<String> {
    let offer = JsFuture::from(pc.create_offer()).await.ok()?;
    let sdp = util::get(&offer, "sdp").as_string()?;
    JsFuture::from(pc.set_local_description(&description(RtcSdpType::Offer, &sdp)))
        .await
        .ok()?;
    gathered_sdp(&pc).await
}

/// setRemoteDescription(offer) + createAnswer + setLocalDescription + gather.
async fn make_answer(pc: RtcPeerConnection, offer_sdp: String) -> Option<String> {
    JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Offer, &offer_sdp)))
        .await
        .ok()?;
    let answer = JsFuture::from(pc.create_answer()).await.ok()?;
    let sdp = util::get(&answer, "sdp").as_string()?;
    JsFuture::from(pc.set_local_description(&description(RtcSdpType::Answer, &sdp)))
        .await
        .ok()?;
    gathered_sdp(&pc).await
}

impl Rtc {
    /// No connections yet; `ice_servers` is the page's `RTCIceServer[]`.
    pub(crate) fn new(sink: Sink, ice_servers: JsValue) -> Self {
        Rtc {
            sink,
            ice_servers,
            conns: HashMap::new(),
            graveyard: Vec::new(),
            retiring: Vec::new(),
        }
    }

    /// A new connection for `conn`. The offerer creates the data channel; the answerer gets it.
    fn new_conn(&mut self, conn: ConnId, offerer: bool) -> Option<RtcPeerConnection> {
        let cfg = RtcConfiguration::new();
        cfg.set_ice_servers(&self.ice_servers);
        let pc = match RtcPeerConnection::new_with_configuration(&cfg) {
            Ok(pc) => pc,
            Err(e) => {
                util::warn(&format!("RTCPeerConnection failed: {e:?}"));
                return None;
            }
        };
        let w = self.sink.clone();
        let pc2 = pc.clone();
        let on_state = callback(move |_| {
            let ev = match pc2.connection_state() {
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed => {
                    Event::ChannelClosed { conn }
                }
                // "disconnected" may recover by itself; the node gives it a grace period.
                RtcPeerConnectionState::Disconnected => Event::ConnInterrupted { conn },
                _ => Event::ConnResumed { conn },
            };
            w.node(ev);
        });
        pc.set_onconnectionstatechange(func(&on_state));
        self.conns.insert(
            conn,
            Conn {
                pc: pc.clone(),
                dc: None,
                closures: vec![on_state],
            },
        );
        if offerer {
            let init = RtcDataChannelInit::new();
            init.set_ordered(true);
            let dc = pc.create_data_channel_with_data_channel_dict("swarmcast", &init);
            self.attach_channel(conn, dc);
        } else {
            let w = self.sink.clone();
            let on_dc = callback(move |ev: JsValue| {
                if let Ok(ev) = ev.dyn_into::<RtcDataChannelEvent>() {
                    w.data_channel(conn, ev.channel());
                }
            });
            pc.set_ondatachannel(func(&on_dc));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.closures.push(on_dc);
            }
        }
        Some(pc)
    }

    /// Hooks the data channel of `conn`; a second channel on one connection is not ours.
    pub(crate) fn attach_channel(&mut self, conn: ConnId, dc: RtcDataChannel) {
        let Some(c) = self.conns.get_mut(&conn) else {
            dc.close();
            return;
        };
        if c.dc.is_some() {
            dc.close();
            return;
        }
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        dc.set_buffered_amount_low_threshold(LOW_WATER);
        let w = self.sink.clone();
        let on_open = callback(move |_| w.node(Event::ChannelOpen { conn }));
        let w = self.sink.clone();
        let on_message = callback(move |ev: JsValue| {
            let Ok(ev) = ev.dyn_into::<MessageEvent>() else {
                return;
            };
            // Text frames are not part of the protocol; the core only sees binary messages.
            if let Some(buf) = ev.data().dyn_ref::<js_sys::ArrayBuffer>() {
                let data = Bytes::from(js_sys::Uint8Array::new(buf).to_vec());
                w.node(Event::ChannelMessage { conn, data });
            }
        });
        let w = self.sink.clone();
        let on_close = callback(move |_| w.node(Event::ChannelClosed { conn }));
        let w = self.sink.clone();
        let dc2 = dc.clone();
        let on_low = callback(move |_| {
            let bytes = dc2.buffered_amount() as usize;
            w.node(Event::ChannelBuffered { conn, bytes });
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
            self.sink.node(Event::ChannelOpen { conn });
        }
    }

    /// The node wants an offer for `conn`.
    pub(crate) fn create_offer(&mut self, conn: ConnId) {
        let Some(pc) = self.new_conn(conn, true) else {
            return self.sink.node(Event::ConnectFailed { conn });
        };
        let w = self.sink.clone();
        spawn_local(async move {
            let ev = match make_offer(pc).await {
                Some(sdp) => Event::OfferCreated { conn, sdp },
                None => Event::ConnectFailed { conn },
            };
            w.node(ev);
        });
    }

    /// The node accepts a remote offer on `conn`: answer it.
    pub(crate) fn accept_offer(&mut self, conn: ConnId, sdp: String) {
        let Some(pc) = self.new_conn(conn, false) else {
            return self.sink.node(Event::ConnectFailed { conn });
        };
        let w = self.sink.clone();
        spawn_local(async move {
            let ev = match make_answer(pc, sdp).await {
                Some(sdp) => Event::AnswerCreated { conn, sdp },
                None => Event::ConnectFailed { conn },
            };
            w.node(ev);
        });
    }

    /// The node applies the remote answer to our offer on `conn`.
    pub(crate) fn apply_answer(&mut self, conn: ConnId, sdp: String) {
        let Some(pc) = self.conns.get(&conn).map(|c| c.pc.clone()) else {
            return;
        };
        let w = self.sink.clone();
        spawn_local(async move {
            let r =
                JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Answer, &sdp)))
                    .await;
            if r.is_err() {
                w.node(Event::ConnectFailed { conn });
            }
        });
    }

    /// Sends one message on `conn`; `false` when its channel is not open or sending failed.
    pub(crate) fn send(&self, conn: ConnId, data: &[u8]) -> bool {
        match self.conns.get(&conn).and_then(|c| c.dc.as_ref()) {
            Some(dc) if dc.ready_state() == RtcDataChannelState::Open => {
                dc.send_with_u8_array(data).is_ok()
            }
            _ => false,
        }
    }

    /// `bufferedAmount` of `conn`'s channel.
    pub(crate) fn buffered(&self, conn: ConnId) -> Option<usize> {
        let dc = self.conns.get(&conn)?.dc.as_ref()?;
        Some(dc.buffered_amount() as usize)
    }

    /// `bufferedAmount` of every open channel.
    pub(crate) fn backlogs(&self) -> Vec<(ConnId, usize)> {
        self.conns
            .iter()
            .filter_map(|(id, c)| {
                let dc = c.dc.as_ref()?;
                (dc.ready_state() == RtcDataChannelState::Open)
                    .then(|| (*id, dc.buffered_amount() as usize))
            })
            .collect()
    }

    /// Forgets `conn` and silences its callbacks; its data channel starts closing (which sends
    /// what it still holds first); the connection itself is returned.
    fn detach(&mut self, conn: ConnId) -> Option<RtcPeerConnection> {
        let mut c = self.conns.remove(&conn)?;
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
        Some(c.pc)
    }

    /// Closes `conn` now.
    pub(crate) fn close(&mut self, conn: ConnId) {
        if let Some(pc) = self.detach(conn) {
            pc.close();
        }
    }

    /// Closes `conn`'s channel now (after it sends what it holds) and the connection
    /// [`RETIRE_MS`] later.
    pub(crate) fn retire(&mut self, conn: ConnId, now_ms: f64) {
        if let Some(pc) = self.detach(conn) {
            self.retiring.push((now_ms + RETIRE_MS, pc));
        }
    }

    /// Frees dead callbacks and closes the retiring connections that are due.
    pub(crate) fn tick(&mut self, now_ms: f64) {
        self.graveyard.clear();
        self.retiring.retain(|(at, pc)| {
            if *at <= now_ms {
                pc.close();
                false
            } else {
                true
            }
        });
    }

    /// Closes everything (page leaving).
    pub(crate) fn close_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.tick(f64::INFINITY);
    }
}
