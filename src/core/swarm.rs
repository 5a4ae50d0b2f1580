//! The swarm state machine: one per peer (source or viewer) and stream.
//!
//! This file holds the public API, the neighbours' life cycle (transport open, handshake,
//! removal) and the dispatch of each message. Each part of the state is a type of its own:
//! the segment store (`store.rs`), playback (`playout.rs`), peer discovery (`discovery.rs`),
//! source sessions (`session.rs`), figures (`stats.rs`); headers and pieces are handled in
//! `data.rs`, the stripe trees in `stripes.rs`, pull repair in `scheduler.rs`, the send path
//! in `sender.rs`, periodic work and timers in `maintenance.rs`. PROTOCOL.md describes the
//! behaviour normatively.

use super::api::{Config, DisconnectReason, Input, Output, PublishError};
use super::bucket::TokenBucket;
use super::discovery::Discovery;
use super::id::{PeerId, StreamId};
use super::identity::{StreamKey, StreamVerifier};
use super::neighbour::{Neighbour, Neighbours};
use super::playout::Playout;
use super::publish::Publisher;
use super::rng::Rng;
use super::scheduler::Pulls;
use super::segment::SegmentMeta;
use super::session::Session;
use super::stats::{BitrateEstimate, NeighbourStats, Stats};
use super::store::Store;
use super::stripes::Trees;
use super::time::Instant;
use super::timers::TimerTable;
use super::wire::{Decoded, Message, RejectReason, Role, MAX_STRIPES, NO_DEPTH, PROTOCOL_VERSION};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

/// Ping period per neighbour.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A gap this long between two inputs means this peer was not running (the binding feeds a
/// timeout at least every [`super::maintenance::TICK`] while it has neighbours).
const FREEZE_GAP: Duration = Duration::from_millis(1_000);

/// One peer's view of one stream.
pub struct Swarm {
    /// The tunables, as given.
    pub(crate) config: Config,
    /// The stream this swarm carries.
    pub(crate) stream: StreamId,
    /// Our own id.
    pub(crate) local: PeerId,
    /// The source's signing state; `None` on a viewer.
    pub(crate) publisher: Option<Publisher>,
    /// Checks the source's signatures (`None` only for an id that is no valid key: then
    /// nothing verifies and every header or init is treated as forged).
    pub(crate) verifier: Option<StreamVerifier>,
    /// The one source of randomness, seeded from [`Config::seed`].
    pub(crate) rng: Rng,
    /// What the caller is to do, in order ([`Swarm::poll_output`]).
    pub(crate) outputs: VecDeque<Output>,
    /// The figures [`Swarm::stats`] reports.
    pub(crate) stats: Stats,
    /// Number of stripes, `1..=MAX_STRIPES`.
    pub(crate) k: usize,
    /// Every open transport and what we know of its peer.
    pub(crate) neighbours: Neighbours,
    /// Peers known besides the neighbours, attempts to connect to them, bans.
    pub(crate) discovery: Discovery,
    /// The segments and inits held, within the window.
    pub(crate) store: Store,
    /// Highest seq any neighbour advertised complete, and when it was first seen.
    pub(crate) max_advertised: Option<(u64, Instant)>,
    /// Pull repair's own state.
    pub(crate) pulls: Pulls,
    /// The stream's bitrate from signed segment sizes.
    pub(crate) bitrate: BitrateEstimate,
    /// Our parents and children in the stripe trees.
    pub(crate) trees: Trees,
    /// Upload pacing.
    pub(crate) bucket: TokenBucket,
    /// Playback order and deadlines (viewers).
    pub(crate) playout: Playout,
    /// When maintenance is next due (run by the first input at or after it).
    pub(crate) next_tick: Instant,
    /// Wake-ups [`Swarm::poll_timeout`] reports, re-armed after every call.
    pub(crate) timers: TimerTable,
    /// Our `Status` changed since it was last sent (sent at the next maintenance).
    pub(crate) status_dirty: bool,
    /// Round-robin cursor of the send path.
    pub(crate) rr: u64,
    /// The latest time given to any call: the swarm's clock never goes back.
    pub(crate) now: Instant,
    /// What is known of the source's sessions (restart detection).
    pub(crate) session: Session,
}

impl Swarm {
    /// A viewer of `stream`, known to others as `local`.
    pub fn viewer(config: Config, stream: StreamId, local: PeerId) -> Self {
        Swarm::new(config, stream, local, None)
    }

    /// The source of the stream `key` signs.
    pub fn source(config: Config, key: StreamKey, local: PeerId) -> Self {
        let stream = key.stream_id();
        Swarm::new(config, stream, local, Some(key))
    }

    fn new(config: Config, stream: StreamId, local: PeerId, key: Option<StreamKey>) -> Self {
        let k = (config.stripes as usize).clamp(1, MAX_STRIPES);
        let is_source = key.is_some();
        let depth = if is_source { 0 } else { NO_DEPTH };
        let stats = Stats {
            stripe_depths: vec![depth; k],
            ..Stats::default()
        };
        Swarm {
            rng: Rng::new(config.seed ^ 0x5357_4152_4d43_4153),
            config,
            stream,
            local,
            verifier: StreamVerifier::new(stream).ok(),
            publisher: key.map(Publisher::new),
            outputs: VecDeque::new(),
            stats,
            k,
            neighbours: Neighbours::default(),
            discovery: Discovery::default(),
            store: Store::default(),
            max_advertised: None,
            pulls: Pulls::default(),
            bitrate: BitrateEstimate::default(),
            trees: Trees::new(k, depth),
            bucket: TokenBucket::new(0, 0, Instant::ZERO),
            playout: Playout::default(),
            next_tick: Instant::ZERO,
            timers: TimerTable::default(),
            status_dirty: false,
            rr: 0,
            now: Instant::ZERO,
            session: Session::default(),
        }
    }

    /// A fresh viewer of the same stream under a new id, to rejoin with after
    /// [`Output::SourceRestarted`]: no neighbours, segments or playback state, but it knows the
    /// new session, so that segments of the older one, which neighbours that have not noticed
    /// the restart still offer, are ignored rather than played (and those neighbours are shown
    /// the new session's header).
    pub fn rejoin(&self, local: PeerId, seed: u64) -> Swarm {
        let mut config = self.config.clone();
        config.seed = seed;
        let mut next = Swarm::new(config, self.stream, local, None);
        next.session = self.session.handed_on();
        next
    }

    /// The stream.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// This peer's id.
    pub fn local_id(&self) -> PeerId {
        self.local
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn is_source(&self) -> bool {
        self.publisher.is_some()
    }

    /// Feeds one event at `now`: a transport event, or the passage of time. (The application
    /// commands among the variants, [`Input::SendSignal`] and [`Input::Playhead`], are the
    /// same as [`Swarm::send_signal`] and [`Swarm::playhead`].)
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        let now = self.begin(now);
        match input {
            Input::Connected { peer } => self.on_connected(now, peer),
            Input::Disconnected { peer } => {
                if self.neighbours.contains_key(&peer) {
                    self.remove_neighbour(now, peer);
                }
            }
            Input::Receive { peer, data } => self.on_receive(now, peer, data, None),
            Input::ReceiveShared { peer, data } => self.on_receive(now, peer, &data, Some(&data)),
            Input::Buffered { peer, bytes } => {
                if let Some(n) = self.neighbours.get_mut(&peer) {
                    n.in_flight = bytes;
                    n.buffered_known = true;
                }
            }
            Input::SendSignal { to, payload } => self.on_send_signal(to, payload),
            Input::Playhead { pts_us } => self.playout.set_playhead(now, pts_us),
            Input::Timeout => {}
        }
        self.end(now);
    }

    /// Command: deliver signalling the binding made for `to` through a common neighbour (the
    /// one that named `to` in a peer exchange); dropped when there is none or it is too big.
    pub fn send_signal(&mut self, now: Instant, to: PeerId, payload: Vec<u8>) {
        let now = self.begin(now);
        self.on_send_signal(to, payload);
        self.end(now);
    }

    /// Command: the frame at the player's playhead was captured at `pts_us` (see
    /// [`Input::Playhead`] for when to call it and what it changes).
    pub fn playhead(&mut self, now: Instant, pts_us: u64) {
        let now = self.begin(now);
        self.playout.set_playhead(now, pts_us);
        self.end(now);
    }

    /// What every input and command starts with: the clock moves on (never back); returns the
    /// swarm's time.
    fn begin(&mut self, now: Instant) -> Instant {
        if now.saturating_duration_since(self.now) > FREEZE_GAP {
            // We ourselves were not running (a frozen tab, a suspended laptop): whatever the
            // neighbours sent meanwhile is still queued for us, so their silence proves nothing.
            for n in self.neighbours.values_mut() {
                n.last_heard = now;
            }
        }
        self.now = self.now.max(now);
        self.now
    }

    /// What every input and command ends with: maintenance when due, then playback and the
    /// send path, then the timers re-armed.
    fn end(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.tick(now);
        }
        self.after_input(now);
        self.arm_timers();
    }

    /// Work done after every input: playback, then handing queued data to transports.
    fn after_input(&mut self, now: Instant) {
        if !self.is_source() {
            if !self.playout.is_playing() && !self.neighbours.is_empty() {
                // Starting up: probe and pull at once rather than at the next tick.
                self.schedule_pulls(now);
            }
            self.playout(now);
        }
        self.flush(now);
    }

    /// The next action, if any. Call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the core next needs [`Input::Timeout`], if ever: the earliest armed timer (never
    /// before the swarm's time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|t| t.max(self.now))
    }

    /// Source: publishes (a new version of) the init segment.
    pub fn publish_init(
        &mut self,
        now: Instant,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<u32, PublishError> {
        let result = self.do_publish_init(now, mime, data);
        self.arm_timers();
        result
    }

    /// Source: publishes the next media segment; returns its sequence number.
    pub fn publish_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        let result = self.do_publish_segment(now, meta, data);
        self.arm_timers();
        result
    }

    /// Says goodbye to every neighbour and closes every transport.
    pub fn close(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let peers: Vec<PeerId> = self.neighbours.keys().copied().collect();
        for p in peers {
            self.send(
                p,
                &Message::Goodbye {
                    reason: RejectReason::Leaving,
                },
            );
            self.drop_neighbour(self.now, p, DisconnectReason::Leaving);
        }
        self.arm_timers();
    }

    /// How many more neighbours the core would like; the binding asks the tracker for that many.
    /// A neighbour silent for a second does not count: it is most likely gone (a killed tab says
    /// no goodbye), and replacing it must not wait until it is declared dead.
    pub fn wanted_neighbours(&self) -> usize {
        let alive = self
            .neighbours
            .values()
            .filter(|n| !n.silent(self.now))
            .count();
        self.config
            .target_degree
            .saturating_sub(alive + self.discovery.attempts())
    }

    /// Neighbours (handshake done) heard from within the last second. When this falls the
    /// binding asks the tracker for more at once rather than at its next periodic announce: the
    /// lost ones may have been this viewer's only path to the data.
    pub fn live_neighbours(&self) -> usize {
        self.neighbours
            .values()
            .filter(|n| n.is_established() && !n.silent(self.now))
            .count()
    }

    /// This peer's figures.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Figures per current neighbour.
    pub fn neighbour_stats(&self) -> Vec<(PeerId, NeighbourStats)> {
        self.neighbours
            .iter()
            .filter(|(_, n)| n.is_established())
            .map(|(id, n)| {
                (
                    *id,
                    NeighbourStats {
                        bytes_up: n.bytes_up,
                        bytes_down: n.bytes_down,
                        is_source: n.is_source(),
                        rtt: n.srtt,
                        child_stripes: n.child_stripes,
                        parent_stripes: n.parent_stripes,
                    },
                )
            })
            .collect()
    }

    // ----- neighbours -------------------------------------------------------------------------

    pub(crate) fn established(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.neighbours.established_ids()
    }

    fn on_connected(&mut self, now: Instant, peer: PeerId) {
        self.discovery.connected(&peer);
        if self.discovery.is_banned(&peer) {
            self.outputs.push_back(Output::Disconnect {
                peer,
                reason: DisconnectReason::Banned,
            });
            return;
        }
        if peer == self.local || self.neighbours.contains_key(&peer) {
            return;
        }
        if self.neighbours.len() >= self.config.max_degree {
            self.neighbours.insert(peer, Neighbour::new(now));
            self.send(
                peer,
                &Message::Goodbye {
                    reason: RejectReason::Full,
                },
            );
            self.drop_neighbour(now, peer, DisconnectReason::Surplus);
            return;
        }
        self.neighbours.insert(peer, Neighbour::new(now));
        let hs = Message::Handshake {
            version: PROTOCOL_VERSION,
            stream: self.stream,
            peer: self.local,
            role: if self.is_source() {
                Role::Source
            } else {
                Role::Viewer
            },
            upload_kbps: self.usable_upload_kbps(),
        };
        self.send(peer, &hs);
    }

    /// Cuts a neighbour off: emits the disconnect, bans it for the session when it misbehaved.
    pub(crate) fn cut(&mut self, now: Instant, peer: PeerId, reason: DisconnectReason) {
        if reason == DisconnectReason::Forged {
            self.stats.forgers_cut += 1;
        }
        self.discovery.ban(peer);
        self.drop_neighbour(now, peer, reason);
    }

    pub(crate) fn drop_neighbour(&mut self, now: Instant, peer: PeerId, reason: DisconnectReason) {
        if self.neighbours.contains_key(&peer) {
            self.remove_neighbour(now, peer);
        }
        self.outputs.push_back(Output::Disconnect { peer, reason });
    }

    /// Forgets a neighbour and repairs what depended on it: its children slots, the stripes we
    /// received from it (resubscribed at once), our requests to it (reissued elsewhere).
    pub(crate) fn remove_neighbour(&mut self, now: Instant, peer: PeerId) {
        let Some(n) = self.neighbours.remove(&peer) else {
            return;
        };
        for s in 0..self.k {
            if n.child_stripes & (1 << s) != 0 {
                self.trees.children[s].retain(|c| *c != peer);
                self.status_dirty = true;
            }
        }
        for (seq, _) in n.requests {
            if let Some(seg) = self.store.segments.get_mut(&seq) {
                seg.drop_requests_of(peer);
            }
        }
        self.pulls.forget_peer(peer);
        self.discovery.forget_neighbour(peer);
        let mut lost = false;
        for s in 0..self.k {
            let st = &mut self.trees.stripes[s];
            if st.parent == Some(peer) {
                st.lose_parent();
                lost = true;
            }
            if st.pending.is_some_and(|(p, _)| p == peer) {
                st.pending = None;
                lost = true;
            }
        }
        self.stats.neighbours = self.neighbours.established_count();
        if lost {
            self.status_dirty = true;
            self.update_depth_stats();
            self.choose_parents(now);
        }
        if !self.is_source() {
            self.schedule_pulls(now);
        }
    }

    /// `shared`: `data` in a buffer the core may keep (pieces are then stored without a copy).
    fn on_receive(&mut self, now: Instant, peer: PeerId, data: &[u8], shared: Option<&Bytes>) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            // Late data from a neighbour already dropped, or a transport never announced.
            return;
        };
        self.stats.wire_bytes_down += data.len() as u64;
        if !n.heard(now) {
            return self.cut(now, peer, DisconnectReason::Flood);
        }
        let msg = match Message::decode_borrowed(data) {
            Ok(m) => m,
            Err(e) => {
                self.cut(now, peer, DisconnectReason::Malformed(e));
                return;
            }
        };
        let established = self.neighbours.established(&peer).is_some();
        match msg {
            Decoded::Other(Message::Handshake {
                version,
                stream,
                peer: claimed,
                role,
                upload_kbps,
            }) => {
                if established {
                    return self.cut(now, peer, DisconnectReason::Protocol("second handshake"));
                }
                self.on_handshake(now, peer, version, stream, claimed, role, upload_kbps);
            }
            // Disconnected, not banned: two connections racing between the same pair (a relayed
            // and a tracker offer crossing) can deliver a message on the one whose handshake the
            // other end never sent; a ban then kept a viewer from its source for the session.
            _ if !established => self.drop_neighbour(
                now,
                peer,
                DisconnectReason::Protocol("message before handshake"),
            ),
            Decoded::Piece {
                seq,
                index,
                data: payload,
            } => self.on_piece(now, peer, seq, index, payload, shared),
            Decoded::Other(m) => self.on_message(now, peer, m),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_handshake(
        &mut self,
        now: Instant,
        peer: PeerId,
        version: u16,
        stream: StreamId,
        claimed: PeerId,
        role: Role,
        upload_kbps: u32,
    ) {
        let refuse = if version != PROTOCOL_VERSION {
            Some((RejectReason::Version, "protocol version"))
        } else if stream != self.stream {
            Some((RejectReason::WrongStream, "wrong stream"))
        } else if claimed != peer {
            Some((RejectReason::WrongStream, "peer id mismatch"))
        } else if role == Role::Source && self.is_source() {
            Some((RejectReason::WrongStream, "two sources"))
        } else {
            None
        };
        if let Some((reason, why)) = refuse {
            self.send(peer, &Message::Goodbye { reason });
            return self.cut(now, peer, DisconnectReason::Protocol(why));
        }
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        n.establish(role, upload_kbps);
        n.next_ping = now;
        n.last_useful = now;
        self.stats.neighbours = self.neighbours.established_count();
        // What a new neighbour needs at once: our availability, our stripe positions, the init
        // segment, some peers, and a first RTT sample.
        let bitfield = self.store.bitfield();
        self.send(peer, &bitfield);
        let status = self.status_message();
        self.send(peer, &status);
        self.send_init(peer);
        self.send_pex(peer);
        self.ping(now, peer);
    }

    pub(crate) fn send_init(&mut self, peer: PeerId) {
        let Some((v, init)) = self.store.newest_init() else {
            return;
        };
        let init = init.clone();
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.init_sent >= v {
            return;
        }
        n.init_sent = v;
        self.send(peer, &Message::Init((*init).clone()));
    }

    pub(crate) fn ping(&mut self, now: Instant, peer: PeerId) {
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.next_ping = now + PING_INTERVAL;
        }
        self.send(
            peer,
            &Message::Ping {
                token: now.as_micros(),
            },
        );
    }

    fn on_message(&mut self, now: Instant, peer: PeerId, msg: Message) {
        match msg {
            // `on_receive` takes handshakes, and pieces decode borrowed; these arms only keep
            // the match whole, with the same answer as there.
            Message::Handshake { .. } => {
                self.cut(now, peer, DisconnectReason::Protocol("second handshake"))
            }
            Message::Piece { seq, index, data } => {
                self.on_piece(now, peer, seq, index, &data, None)
            }
            Message::Bitfield { base, bits } => {
                let Some(n) = self.neighbours.established_mut(&peer) else {
                    return;
                };
                n.haves.insert_bitfield(base, &bits);
                if let Some(max) = n.haves.max() {
                    self.probe_session(peer, max);
                    self.advertised(now, peer, max);
                }
            }
            Message::Have { seq } => {
                let Some(n) = self.neighbours.established_mut(&peer) else {
                    return;
                };
                n.haves.insert(seq);
                self.probe_session(peer, seq);
                self.advertised(now, peer, seq);
            }
            Message::Header(signed) => self.on_header(now, peer, signed),
            Message::Request { seq, pieces } => self.on_request(peer, seq, pieces),
            Message::Cancel { seq } => {
                if let Some(n) = self.neighbours.established_mut(&peer) {
                    n.cancel_replies(seq);
                }
            }
            Message::Subscribe { stripe } => self.on_subscribe(now, peer, stripe),
            Message::Unsubscribe { stripe } => self.on_unsubscribe(now, peer, stripe),
            Message::SubscribeAck {
                stripe,
                accepted,
                depth,
            } => self.on_subscribe_ack(now, peer, stripe, accepted, depth),
            Message::Reject { .. } => {}
            Message::Init(init) => self.on_init(now, peer, init),
            Message::Peers { peers } => {
                self.on_peers(peer, peers);
            }
            Message::Relay { from, to, payload } => self.on_relay(now, peer, from, to, payload),
            Message::Goodbye { .. } => {
                self.drop_neighbour(now, peer, DisconnectReason::GoodbyeReceived)
            }
            Message::Status {
                depths,
                free,
                displace_kbps,
            } => self.on_status(now, peer, depths, free, displace_kbps),
            Message::Ping { token } => self.send(peer, &Message::Pong { token }),
            Message::Pong { token } => {
                if token <= now.as_micros() {
                    let Some(n) = self.neighbours.established_mut(&peer) else {
                        return;
                    };
                    n.rtt_sample(Duration::from_micros(now.as_micros() - token));
                }
            }
        }
    }
}
