//! WebSocket tracker client (the WebTorrent tracker protocol, see [`crate::client::tracker`]).
//! Several trackers at once, each with its own socket, offers, re-announce interval and
//! reconnect backoff.

use super::peer::{with, Driver};
use super::rtc::{make_offer, Via};
use super::util::{self, callback, func, Callback};
use crate::client::binstr;
use crate::client::tracker::{
    answer_json, parse, reconnect_delay_ms, Announce, AnnounceEvent, OfferOut, TrackerMessage,
};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use web_sys::{MessageEvent, WebSocket};

/// Offers made per announce, at most: each is a live RTCPeerConnection until answered.
const MAX_OFFERS: usize = 5;

/// Re-announce interval when the tracker names none.
const DEFAULT_INTERVAL_MS: f64 = 30_000.0;

/// While this peer has fewer neighbours than it wants, it re-announces (with fresh offers) at
/// least this often, whatever the tracker's interval: joining fast matters more for live video.
const HUNGRY_INTERVAL_MS: f64 = 5_000.0;

/// A viewer whose live neighbours fell below what it had at its last announce re-announces at
/// once, but not more often than this. The neighbours it lost may have been its only path to
/// everyone holding data (viewers that joined first and were killed): the peers it learned
/// through them can no longer be reached through them, and waiting for the periodic announce
/// stalled playback for seconds.
const LOSS_REANNOUNCE_MS: f64 = 1_000.0;

/// One tracker connection.
pub(crate) struct Tracker {
    url: String,
    ws: Option<WebSocket>,
    open: bool,
    attempts: u32,
    /// Connection attempts that failed, since the last success.
    pub(crate) failures: u32,
    reconnect_at: f64,
    announce_at: Option<f64>,
    interval_ms: f64,
    /// Peers in the swarm (seeders + leechers) as the tracker last said, us included.
    swarm_size: Option<usize>,
    /// When we last announced, and how many live neighbours we had then.
    announced: (f64, usize),
    announcing: bool,
    closures: Vec<Callback>,
    graveyard: Vec<Callback>,
}

impl Tracker {
    /// A tracker at `url`, connected at the next tick.
    pub(crate) fn new(url: String) -> Self {
        Tracker {
            url,
            ws: None,
            open: false,
            attempts: 0,
            failures: 0,
            reconnect_at: 0.0,
            announce_at: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            swarm_size: None,
            announced: (0.0, 0),
            announcing: false,
            closures: Vec::new(),
            graveyard: Vec::new(),
        }
    }

    /// The socket is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    fn send(&self, text: &str) -> bool {
        match &self.ws {
            Some(ws) if self.open => ws.send_with_str(text).is_ok(),
            _ => false,
        }
    }

    /// Reconnects now (the peer rejoined under a new id).
    pub(crate) fn restart(&mut self) {
        self.detach();
        self.reconnect_at = 0.0;
        self.attempts = 0;
        self.swarm_size = None;
        self.announced = (0.0, 0);
    }

    fn detach(&mut self) {
        if let Some(ws) = self.ws.take() {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
            ws.set_onerror(None);
            let _ = ws.close();
        }
        self.open = false;
        self.announcing = false;
        self.graveyard.append(&mut self.closures);
    }
}

impl Driver {
    pub(crate) fn tracker_tick(&mut self, now: f64) {
        for i in 0..self.trackers.len() {
            self.trackers[i].graveyard.clear();
            let t = &self.trackers[i];
            let lost = !self.is_source
                && self.swarm.live_neighbours() < t.announced.1
                && now - t.announced.0 >= LOSS_REANNOUNCE_MS
                && self.swarm.wanted_neighbours() > 0;
            if t.ws.is_none() && now >= t.reconnect_at {
                self.tracker_connect(i);
            } else if t.open && !t.announcing && (lost || t.announce_at.is_some_and(|at| now >= at))
            {
                if lost {
                    util::debug("neighbours lost: announcing now");
                }
                self.announce(i, AnnounceEvent::Update, lost);
            }
        }
    }

    fn tracker_connect(&mut self, i: usize) {
        let me = self.me.clone();
        let t = &mut self.trackers[i];
        t.detach();
        let ws = match WebSocket::new(&t.url) {
            Ok(ws) => ws,
            Err(_) => {
                // A malformed URL never gets better; retry rarely so it shows as unreachable.
                t.failures += 1;
                t.reconnect_at = util::now_ms() + 60_000.0;
                return;
            }
        };
        let w = me.clone();
        let on_open = callback(move |_| {
            with(&w, |d| d.on_tracker_open(i));
        });
        let w = me.clone();
        let on_message = callback(move |ev: wasm_bindgen::JsValue| {
            let text = ev
                .dyn_into::<MessageEvent>()
                .ok()
                .and_then(|e| e.data().as_string());
            if let Some(text) = text {
                with(&w, |d| d.on_tracker_message(i, &text));
            }
        });
        let w = me;
        let on_close = callback(move |_| {
            with(&w, |d| d.on_tracker_closed(i));
        });
        ws.set_onopen(func(&on_open));
        ws.set_onmessage(func(&on_message));
        ws.set_onclose(func(&on_close));
        ws.set_onerror(func(&on_close));
        t.closures = vec![on_open, on_message, on_close];
        t.ws = Some(ws);
    }

    fn on_tracker_open(&mut self, i: usize) {
        let t = &mut self.trackers[i];
        t.open = true;
        t.attempts = 0;
        t.failures = 0;
        util::debug(&format!("tracker {} open", t.url));
        let event = if self.is_source {
            AnnounceEvent::Completed
        } else {
            AnnounceEvent::Started
        };
        self.announce(i, event, false);
    }

    fn on_tracker_closed(&mut self, i: usize) {
        let t = &mut self.trackers[i];
        if t.ws.is_none() {
            return;
        }
        let was_open = t.open;
        t.detach();
        if !was_open {
            t.failures += 1;
        }
        let delay = reconnect_delay_ms(t.attempts, util::random_unit());
        t.attempts += 1;
        t.reconnect_at = util::now_ms() + delay;
        util::debug(&format!(
            "tracker {} closed; retry in {} ms",
            t.url, delay as u64
        ));
    }

    /// Announces to tracker `i`, with as many fresh offers as the core wants neighbours.
    /// `lost`: neighbours were just lost; the last announce's offers still out do not count
    /// against new ones (in a small swarm they went to peers we are connected to already, which
    /// ignore them until they expire, and the announce that should replace the lost neighbours
    /// would carry none).
    fn announce(&mut self, i: usize, event: AnnounceEvent, lost: bool) {
        let t = &mut self.trackers[i];
        if t.announcing {
            return;
        }
        t.announcing = true;
        // Offers still out (ours, unanswered) count towards what is wanted; after a loss only
        // beyond one announce's worth (so that a flapping neighbour count cannot pile up
        // connections: at most twice `MAX_OFFERS` wait for answers).
        let pending = if lost {
            self.rtc.by_offer.len().saturating_sub(MAX_OFFERS)
        } else {
            self.rtc.by_offer.len()
        };
        let wanted = if self.is_source {
            // The source accepts viewers' offers; its own offers reach those that came first.
            self.swarm
                .config()
                .max_degree
                .saturating_sub(self.swarm.stats().neighbours)
                .min(MAX_OFFERS)
        } else {
            self.swarm.wanted_neighbours().min(MAX_OFFERS)
        }
        .saturating_sub(pending)
        .min(self.tracker_room());
        let ids: Vec<u64> = (0..wanted)
            .filter_map(|_| self.new_conn(None, true, Via::Tracker(i)))
            .collect();
        if ids.is_empty() {
            self.send_announce(i, event, Vec::new());
            return;
        }
        // Offers gather their ICE candidates concurrently; the last one to finish sends the
        // announce (sequentially, five offers cost five gathering rounds of start-up time).
        let pending = Rc::new(RefCell::new((ids.len(), Vec::new())));
        for id in ids {
            let weak = self.me.clone();
            let pending = pending.clone();
            spawn_local(async move {
                let sdp = make_offer(&weak, id).await;
                if sdp.is_none() {
                    with(&weak, |d| d.close_conn(id, false));
                }
                let done = {
                    let mut p = pending.borrow_mut();
                    if let Some(sdp) = sdp {
                        let offer_id = util::random_bytes();
                        p.1.push((id, OfferOut { offer_id, sdp }));
                    }
                    p.0 -= 1;
                    (p.0 == 0).then(|| std::mem::take(&mut p.1))
                };
                if let Some(offers) = done {
                    with(&weak, |d| d.send_announce(i, event, offers));
                }
            });
        }
    }

    fn send_announce(&mut self, i: usize, event: AnnounceEvent, offers: Vec<(u64, OfferOut)>) {
        // Connections closed while their offers were made (rejoin, timeout) are not offered.
        let offers: Vec<(u64, OfferOut)> = offers
            .into_iter()
            .filter(|(id, _)| self.rtc.exists(*id))
            .collect();
        let s = self.swarm.stats();
        let out: Vec<OfferOut> = offers.iter().map(|(_, o)| o.clone()).collect();
        let text = Announce {
            info_hash: self.info_hash,
            peer_id: self.local,
            numwant: offers.len(),
            event,
            offers: out,
            uploaded: s.wire_bytes_up,
            downloaded: s.wire_bytes_down,
            seeder: self.is_source,
        }
        .to_json();
        util::debug(&format!("announce {event:?} with {} offers", offers.len()));
        let t = &mut self.trackers[i];
        // Hungry while neighbours are wanted and the swarm has peers we are not connected to
        // yet (unknown size counts as "has").
        let others = t.swarm_size.map_or(usize::MAX, |n| n.saturating_sub(1));
        let hungry = self.swarm.wanted_neighbours() > 0 && others > self.swarm.stats().neighbours;
        t.announcing = false;
        let sent = t.send(&text);
        t.announced = (util::now_ms(), self.swarm.live_neighbours());
        let interval = if hungry {
            t.interval_ms.min(HUNGRY_INTERVAL_MS)
        } else {
            t.interval_ms
        };
        t.announce_at = Some(util::now_ms() + interval);
        for (id, o) in offers {
            if sent {
                self.rtc.by_offer.insert(binstr::encode(&o.offer_id), id);
            } else {
                self.close_conn(id, false);
            }
        }
    }

    fn on_tracker_message(&mut self, i: usize, text: &str) {
        match parse(text, self.info_hash) {
            Ok(TrackerMessage::Response {
                interval,
                warning,
                complete,
                incomplete,
            }) => {
                if complete.is_some() || incomplete.is_some() {
                    let n = complete
                        .unwrap_or(0)
                        .saturating_add(incomplete.unwrap_or(0));
                    self.trackers[i].swarm_size = Some(n.min(usize::MAX as u64) as usize);
                }
                if let Some(secs) = interval.filter(|&s| s > 0) {
                    self.trackers[i].interval_ms = (secs as f64 * 1000.0).max(2_000.0);
                }
                if let Some(w) = warning {
                    util::warn(&format!("tracker warning: {w}"));
                }
            }
            Ok(TrackerMessage::Offer {
                peer,
                offer_id,
                sdp,
            }) => {
                if self.tracker_room() == 0 {
                    return;
                }
                self.answer_offer(peer, sdp, Via::Tracker(i), move |d, answer| {
                    let text = answer_json(d.info_hash, d.local, peer, &offer_id, &answer);
                    d.trackers[i].send(&text);
                });
            }
            Ok(TrackerMessage::Answer {
                peer,
                offer_id,
                sdp,
            }) => self.on_tracker_answer(peer, &offer_id, sdp),
            Ok(TrackerMessage::Failure { reason }) => {
                util::warn(&format!("tracker refused: {reason}"));
            }
            Err(e) => util::debug(&format!("tracker frame ignored: {e}")),
        }
    }

    /// Sends `stopped` to every open tracker and closes the sockets (page hide, destroy).
    pub(crate) fn stop_trackers(&mut self) {
        for i in 0..self.trackers.len() {
            let text = Announce {
                info_hash: self.info_hash,
                peer_id: self.local,
                numwant: 0,
                event: AnnounceEvent::Stopped,
                offers: Vec::new(),
                uploaded: self.swarm.stats().wire_bytes_up,
                downloaded: self.swarm.stats().wire_bytes_down,
                seeder: self.is_source,
            }
            .to_json();
            let t = &mut self.trackers[i];
            t.send(&text);
            t.detach();
            // Back on a bfcache restore the next tick reconnects.
            t.reconnect_at = util::now_ms() + 1000.0;
        }
    }
}
