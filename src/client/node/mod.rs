//! [`Node`]: one peer of one stream above its [`Swarm`], with no I/O — the connection table,
//! the tracker client's schedule, relayed signalling, rejoin after a source restart and the
//! facts behind the state shown to viewers.
//!
//! quinn-proto's `Endpoint` above its `Connection`s: the browser binding, the simulator, the
//! test harness and the native programs each *drive* a node — they create offers and answers,
//! move bytes and open sockets when told to — and none re-implements a rule of it.
//!
//! ```text
//! node.handle(now, Event::ChannelMessage { conn, data });
//! while let Some(action) = node.poll_action() { /* send, close, create offer, play ... */ }
//! let wake_at = node.poll_timeout();
//! ```
//!
//! Time comes in as [`Instant`]s; randomness (offer ids, peer ids after a rejoin, backoff
//! jitter) comes from the seed given to [`Node::new`].

mod conns;
mod trackers;

pub use conns::{
    Claim, Conn, Conns, Via, INTERRUPTED_GRACE, OFFER_TIMEOUT, SETUP_SLACK, SETUP_TIMEOUT,
    STUCK_SETUP,
};
pub use trackers::{
    Link, Tracker, DEFAULT_INTERVAL, HUNGRY_INTERVAL, LOSS_REANNOUNCE, MIN_INTERVAL,
};

use crate::client::binstr;
use crate::client::links::yield_to_crossing_offer;
use crate::client::status::Facts;
use crate::client::tracker::{
    parse, Announce, AnnounceEvent, OfferOut, SignalPayload, TrackerMessage, TrackerRequest,
};
use crate::core::{
    Config, DisconnectReason, InitSegment, Input, Instant, Output, PeerId, PlayableSegment,
    PublishError, SegmentMeta, Stats, StreamId, StreamKey, Swarm,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Offers made per tracker announce, at most: in a browser each is a live `RTCPeerConnection`
/// until answered.
pub const OFFERS_PER_ANNOUNCE: usize = 5;

/// The node's housekeeping period: tracker schedule, stale attempts, silence checks.
pub const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// No media for this long: the broadcast is considered not (or no longer) on air.
pub const MEDIA_SILENCE: Duration = Duration::from_secs(8);

/// After playing, no media for this long: the viewer rejoins the swarm from scratch (new peer
/// id, new core state). A restarted broadcaster numbers its segments from 0 again; the core
/// notices as soon as one of the new session's headers reaches it
/// ([`Output::SourceRestarted`]), and this is the fallback when none does.
pub const REJOIN_AFTER_SILENCE: Duration = Duration::from_secs(12);

/// A connection of this node, named by the node (the platform keeps its handles under it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What this node is.
pub enum NodeRole {
    /// A viewer of `stream`.
    Viewer {
        /// The stream.
        stream: StreamId,
    },
    /// The source of the stream `key` signs.
    Source {
        /// The stream's key.
        key: StreamKey,
    },
}

/// How a node is set up.
pub struct NodeConfig {
    /// Viewer or source.
    pub role: NodeRole,
    /// Tracker URLs (the platform opens them when told to); may be empty.
    pub trackers: Vec<String>,
    /// This peer's id (the caller draws it at random).
    pub peer_id: PeerId,
    /// The swarm core's configuration.
    pub swarm: Config,
    /// Offers per announce, at most ([`OFFERS_PER_ANNOUNCE`]).
    pub offers_per_announce: usize,
    /// At most this many connections are set up through trackers (test hook: the rest must
    /// come through the core's relay); `None`: no limit.
    pub tracker_conn_limit: Option<usize>,
}

impl NodeConfig {
    /// A node with the defaults every host uses.
    pub fn new(role: NodeRole, trackers: Vec<String>, peer_id: PeerId, swarm: Config) -> Self {
        NodeConfig {
            role,
            trackers,
            peer_id,
            swarm,
            offers_per_announce: OFFERS_PER_ANNOUNCE,
            tracker_conn_limit: None,
        }
    }
}

/// What happened, told by the platform.
#[derive(Debug, Clone)]
pub enum Event {
    /// Tracker `tracker`'s socket opened.
    TrackerOpen {
        /// Index into [`NodeConfig::trackers`].
        tracker: usize,
    },
    /// A text frame from tracker `tracker`.
    TrackerText {
        /// The tracker.
        tracker: usize,
        /// The frame.
        text: String,
    },
    /// A tracker message already parsed (a host that models the tracker, like the simulator).
    TrackerMessage {
        /// The tracker.
        tracker: usize,
        /// The message.
        message: TrackerMessage,
    },
    /// Tracker `tracker`'s socket closed or failed to open.
    TrackerClosed {
        /// The tracker.
        tracker: usize,
    },
    /// The URL of tracker `tracker` cannot be opened at all.
    TrackerBadUrl {
        /// The tracker.
        tracker: usize,
    },
    /// The offer [`Action::CreateOffer`] asked for, ICE candidates included.
    OfferCreated {
        /// The connection.
        conn: ConnId,
        /// Its SDP.
        sdp: String,
    },
    /// The answer [`Action::AcceptOffer`] asked for, ICE candidates included.
    AnswerCreated {
        /// The connection.
        conn: ConnId,
        /// Its SDP.
        sdp: String,
    },
    /// Making an offer or answer, or applying one, failed: the attempt is dead.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection's data channel opened.
    ChannelOpen {
        /// The connection.
        conn: ConnId,
    },
    /// One binary message arrived on the connection's data channel.
    ChannelMessage {
        /// The connection.
        conn: ConnId,
        /// The message.
        data: Bytes,
    },
    /// How many bytes the channel still holds unsent (after sends, and at low water).
    ChannelBuffered {
        /// The connection.
        conn: ConnId,
        /// `bufferedAmount`.
        bytes: usize,
    },
    /// The channel or its connection closed or failed.
    ChannelClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The transport says the connection is interrupted (ICE "disconnected"); it may recover.
    ConnInterrupted {
        /// The connection.
        conn: ConnId,
    },
    /// The interruption ended.
    ConnResumed {
        /// The connection.
        conn: ConnId,
    },
    /// Where the player's playhead is (see [`Input::Playhead`]).
    Playhead {
        /// Capture time of the frame at the playhead, µs.
        pts_us: u64,
    },
    /// Time passed ([`Node::poll_timeout`] came due, or any periodic tick).
    Timeout,
}

/// Why the node closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The core cut the neighbour off.
    Core(DisconnectReason),
    /// Another connection to the same peer won the tie-break.
    Duplicate,
    /// Our relayed offer crossed theirs and theirs wins.
    Crossing,
    /// It never opened in time, its offer was never answered, or it stayed interrupted.
    Stale,
    /// An attempt stuck for [`STUCK_SETUP`] gives way to a fresh offer.
    Stuck,
    /// Making or applying its offer or answer failed, or its offer could not be sent.
    Failed,
    /// The node rejoined: the channel closes after sending what it holds (the new session's
    /// header, passed on to neighbours that have not noticed the restart); the connection a
    /// moment later.
    Rejoin,
    /// The node is leaving.
    Leaving,
}

/// Why the node started over as a new viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejoinReason {
    /// The core saw the source restart the stream.
    SourceRestarted,
    /// No media for [`REJOIN_AFTER_SILENCE`] after playing.
    Silence,
}

/// What the node wants done.
#[derive(Debug, Clone)]
pub enum Action {
    /// Open a socket to tracker `tracker`.
    TrackerConnect {
        /// The tracker.
        tracker: usize,
        /// Its URL.
        url: String,
    },
    /// Send this to tracker `tracker` (as [`TrackerRequest::to_json`]).
    TrackerSend {
        /// The tracker.
        tracker: usize,
        /// The request.
        request: TrackerRequest,
    },
    /// Close tracker `tracker`'s socket.
    TrackerClose {
        /// The tracker.
        tracker: usize,
    },
    /// Create a connection and an offer for it (with a data channel); answer with
    /// [`Event::OfferCreated`] or [`Event::ConnectFailed`].
    CreateOffer {
        /// The new connection.
        conn: ConnId,
    },
    /// Create a connection for this remote offer and an answer to it; answer with
    /// [`Event::AnswerCreated`] or [`Event::ConnectFailed`].
    AcceptOffer {
        /// The new connection.
        conn: ConnId,
        /// The offer's SDP.
        sdp: String,
    },
    /// Apply the remote answer to our offer.
    ApplyAnswer {
        /// The connection.
        conn: ConnId,
        /// The answer's SDP.
        sdp: String,
    },
    /// Send one message on the connection's data channel.
    Send {
        /// The connection.
        conn: ConnId,
        /// One encoded message.
        data: Bytes,
    },
    /// Close the connection; the node has forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A verified init segment: (re)initialise the player with it.
    Init(Arc<InitSegment>),
    /// The next verified segment to play.
    Play(PlayableSegment),
    /// Segment `seq` will never be played.
    Skip {
        /// The segment given up on.
        seq: u64,
    },
    /// The node started over as a new viewer under `peer`: the player forgets the stream and
    /// waits for a new init segment.
    Rejoined {
        /// The new peer id.
        peer: PeerId,
        /// Why.
        reason: RejoinReason,
    },
}

/// SplitMix64: the node's own choices (offer ids, peer ids, jitter), from its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn id20(&mut self) -> [u8; 20] {
        let mut b = [0u8; 20];
        for chunk in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        b
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An announce waiting for its offers to be made.
#[derive(Debug)]
struct Batch {
    tracker: usize,
    event: AnnounceEvent,
    waiting: Vec<ConnId>,
    offers: Vec<(ConnId, OfferOut)>,
}

/// Media facts the node learns from the core's outputs.
#[derive(Debug, Default, Clone)]
struct Media {
    last: Option<Instant>,
    ever: bool,
    /// Segments were played since the last (re)join.
    had_play: bool,
}

/// One peer of one stream, sans-IO. See the module docs.
pub struct Node {
    swarm: Swarm,
    local: PeerId,
    info_hash: [u8; 20],
    is_source: bool,
    offers_per_announce: usize,
    tracker_conn_limit: Option<usize>,
    conns: Conns,
    trackers: Vec<Tracker>,
    batches: Vec<Batch>,
    actions: VecDeque<Action>,
    rng: Rng,
    media: Media,
    now: Instant,
    next_housekeeping: Instant,
    rejoin_pending: bool,
    closed: bool,
}

impl Node {
    /// A node; `seed` drives every choice it makes itself.
    pub fn new(config: NodeConfig, seed: u64) -> Self {
        let local = config.peer_id;
        let (swarm, is_source) = match config.role {
            NodeRole::Viewer { stream } => (Swarm::viewer(config.swarm, stream, local), false),
            NodeRole::Source { key } => (Swarm::source(config.swarm, key, local), true),
        };
        Node {
            info_hash: swarm.stream().info_hash(),
            swarm,
            local,
            is_source,
            offers_per_announce: config.offers_per_announce,
            tracker_conn_limit: config.tracker_conn_limit,
            conns: Conns::default(),
            trackers: config.trackers.into_iter().map(Tracker::new).collect(),
            batches: Vec::new(),
            actions: VecDeque::new(),
            rng: Rng(seed ^ 0x4e4f_4445),
            media: Media::default(),
            now: Instant::ZERO,
            next_housekeeping: Instant::ZERO,
            rejoin_pending: false,
            closed: false,
        }
    }

    /// This peer's current id (it changes on a rejoin).
    pub fn local_id(&self) -> PeerId {
        self.local
    }

    /// The stream.
    pub fn stream(&self) -> StreamId {
        self.swarm.stream()
    }

    /// This node is the source.
    pub fn is_source(&self) -> bool {
        self.is_source
    }

    /// The core's figures.
    pub fn stats(&self) -> &Stats {
        self.swarm.stats()
    }

    /// The core (read-only: neighbour figures, configuration).
    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// The connection table (read-only).
    pub fn conns(&self) -> &Conns {
        &self.conns
    }

    /// The trackers (read-only).
    pub fn trackers(&self) -> &[Tracker] {
        &self.trackers
    }

    /// Feeds one event at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.now = self.now.max(now);
        let now = self.now;
        if self.closed {
            return;
        }
        match event {
            Event::TrackerOpen { tracker } => self.on_tracker_open(now, tracker),
            Event::TrackerText { tracker, text } => {
                // A frame we do not understand is dropped; the connection stays.
                if let Ok(message) = parse(&text, self.info_hash) {
                    self.on_tracker_message(now, tracker, message);
                }
            }
            Event::TrackerMessage { tracker, message } => {
                self.on_tracker_message(now, tracker, message)
            }
            Event::TrackerClosed { tracker } => {
                let jitter = self.rng.unit();
                if let Some(t) = self.trackers.get_mut(tracker) {
                    t.closed(now, jitter);
                }
                self.drop_batches_of(tracker);
            }
            Event::TrackerBadUrl { tracker } => {
                if let Some(t) = self.trackers.get_mut(tracker) {
                    t.bad_url(now);
                }
            }
            Event::OfferCreated { conn, sdp } => self.on_offer_created(now, conn, sdp),
            Event::AnswerCreated { conn, sdp } => self.on_answer_created(now, conn, sdp),
            Event::ConnectFailed { conn } => {
                self.batch_forget(conn);
                self.close_conn(conn, CloseReason::Failed, true);
            }
            Event::ChannelOpen { conn } => self.on_channel_open(now, conn),
            Event::ChannelMessage { conn, data } => {
                if let Some(peer) = self.open_peer(conn) {
                    self.swarm
                        .handle_input(now, Input::ReceiveShared { peer, data });
                }
            }
            Event::ChannelBuffered { conn, bytes } => {
                if let Some(peer) = self.open_peer(conn) {
                    self.swarm
                        .handle_input(now, Input::Buffered { peer, bytes });
                }
            }
            Event::ChannelClosed { conn } => {
                self.batch_forget(conn);
                if let Some(c) = self.conns.remove(conn) {
                    if let (true, Some(peer)) = (c.open, c.peer) {
                        self.swarm.handle_input(now, Input::Disconnected { peer });
                    }
                }
            }
            Event::ConnInterrupted { conn } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.interrupted.get_or_insert(now);
                }
            }
            Event::ConnResumed { conn } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.interrupted = None;
                }
            }
            Event::Playhead { pts_us } => self.swarm.handle_input(now, Input::Playhead { pts_us }),
            Event::Timeout => {
                if self.swarm.poll_timeout().is_some_and(|t| t <= now) {
                    self.swarm.handle_input(now, Input::Timeout);
                }
            }
        }
        if now >= self.next_housekeeping {
            self.housekeeping(now);
        }
        self.drain_swarm(now);
    }

    /// The next action, if any. Call until `None` after every event and method call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the node next needs [`Event::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let house = self.next_housekeeping;
        Some(match self.swarm.poll_timeout() {
            Some(t) => t.min(house),
            None => house,
        })
    }

    /// Source: publishes (a new version of) the init segment.
    pub fn publish_init(
        &mut self,
        now: Instant,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<u32, PublishError> {
        self.now = self.now.max(now);
        let r = self.swarm.publish_init(self.now, mime, data);
        self.drain_swarm(self.now);
        r
    }

    /// Source: publishes the next media segment; returns its sequence number.
    pub fn publish_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        self.now = self.now.max(now);
        let r = self.swarm.publish_segment(self.now, meta, data);
        self.drain_swarm(self.now);
        r
    }

    /// Leaves: `stopped` to every open tracker, goodbyes to every neighbour, every connection
    /// and socket closed. The node does nothing afterwards.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.now = self.now.max(now);
        self.stop_trackers(None);
        self.swarm.close(self.now);
        self.drain_swarm(self.now);
        for id in self.conns.ids() {
            self.close_conn(id, CloseReason::Leaving, false);
        }
        self.batches.clear();
        self.closed = true;
    }

    /// The page may come back (back/forward cache): `stopped` to the trackers, sockets closed,
    /// reconnected [`trackers::RESUME_DELAY`] later; connections stay.
    pub fn pause_trackers(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let at = self.now + trackers::RESUME_DELAY;
        self.stop_trackers(Some(at));
    }

    /// What the node knows for the state shown to the viewer ([`crate::client::status`]); the
    /// host adds what only it knows (`playing`, `fatal`, `destroyed`).
    pub fn facts(&self, now: Instant) -> Facts {
        let s = self.swarm.stats();
        Facts {
            destroyed: self.closed,
            fatal: None,
            is_source: self.is_source,
            media_fresh: self
                .media
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < MEDIA_SILENCE),
            ever_media: self.media.ever,
            playing: false,
            trackers: self.trackers.len(),
            trackers_open: self.trackers.iter().filter(|t| t.is_open()).count(),
            trackers_failing: self.trackers.iter().all(|t| t.failures > 0),
            neighbours: s.neighbours,
            capacity_short: s.capacity_short,
        }
    }

    // ---- internals ----

    fn stop_trackers(&mut self, resume_at: Option<Instant>) {
        for i in 0..self.trackers.len() {
            if self.trackers[i].is_open() {
                let request = self.announce_request(AnnounceEvent::Stopped, Vec::new());
                self.actions.push_back(Action::TrackerSend {
                    tracker: i,
                    request,
                });
            }
            if !matches!(self.trackers[i].link, Link::Idle { .. } | Link::Stopped) {
                self.actions.push_back(Action::TrackerClose { tracker: i });
            }
            self.trackers[i].stop(resume_at);
            self.drop_batches_of(i);
        }
    }

    fn open_peer(&self, conn: ConnId) -> Option<PeerId> {
        self.conns.get(conn).filter(|c| c.open).and_then(|c| c.peer)
    }

    /// Forgets and closes `conn`; `tell_core`: report `Disconnected` if the core knew it.
    fn close_conn(&mut self, conn: ConnId, reason: CloseReason, tell_core: bool) {
        let Some(c) = self.conns.remove(conn) else {
            return;
        };
        if let (true, true, Some(peer)) = (tell_core, c.open, c.peer) {
            self.swarm
                .handle_input(self.now, Input::Disconnected { peer });
        }
        self.actions.push_back(Action::Close { conn, reason });
    }

    fn batch_forget(&mut self, conn: ConnId) {
        let mut done = Vec::new();
        for (i, b) in self.batches.iter_mut().enumerate() {
            if let Some(k) = b.waiting.iter().position(|c| *c == conn) {
                b.waiting.swap_remove(k);
                if b.waiting.is_empty() {
                    done.push(i);
                }
            }
        }
        for i in done.into_iter().rev() {
            let b = self.batches.swap_remove(i);
            self.send_announce(b);
        }
    }

    fn drop_batches_of(&mut self, tracker: usize) {
        let (gone, keep): (Vec<Batch>, Vec<Batch>) =
            self.batches.drain(..).partition(|b| b.tracker == tracker);
        self.batches = keep;
        for b in gone {
            for id in b
                .waiting
                .into_iter()
                .chain(b.offers.into_iter().map(|o| o.0))
            {
                self.close_conn(id, CloseReason::Failed, false);
            }
        }
    }

    /// How many more connections the trackers may set up.
    fn tracker_room(&self) -> usize {
        match self.tracker_conn_limit {
            Some(limit) => limit.saturating_sub(self.conns.via_tracker()),
            None => usize::MAX,
        }
    }

    fn room_for(&self, peer: &PeerId) -> bool {
        *peer != self.local
            && self.conns.of_peer(peer).is_none()
            && self.conns.len() < self.swarm.config().max_degree + SETUP_SLACK
    }

    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + HOUSEKEEPING;
        for id in self.conns.stale(now) {
            self.batch_forget(id);
            self.close_conn(id, CloseReason::Stale, true);
        }
        if !self.is_source
            && self.media.had_play
            && self
                .media
                .last
                .is_none_or(|t| now.saturating_duration_since(t) > REJOIN_AFTER_SILENCE)
        {
            self.rejoin(now, RejoinReason::Silence);
        }
        let live = self.swarm.live_neighbours();
        let wanted = self.swarm.wanted_neighbours();
        for i in 0..self.trackers.len() {
            if self.trackers[i].connect_due(now) {
                self.trackers[i].connecting();
                self.actions.push_back(Action::TrackerConnect {
                    tracker: i,
                    url: self.trackers[i].url.clone(),
                });
                continue;
            }
            let (periodic, lost) = self.trackers[i].announce_due(now, live);
            // The loss rule is for viewers that still want neighbours.
            let lost = lost && !self.is_source && wanted > 0;
            if periodic || lost {
                self.announce(now, i, AnnounceEvent::Update, lost);
            }
        }
    }

    fn on_tracker_open(&mut self, now: Instant, i: usize) {
        let Some(t) = self.trackers.get_mut(i) else {
            return;
        };
        if t.link != Link::Connecting {
            return;
        }
        t.opened();
        let event = if self.is_source {
            AnnounceEvent::Completed
        } else {
            AnnounceEvent::Started
        };
        self.announce(now, i, event, false);
    }

    /// Announces to tracker `i`, with as many fresh offers as the core wants neighbours.
    /// `lost`: neighbours were just lost; the last announce's offers still out do not count
    /// against new ones (in a small swarm they went to peers we are connected to already, which
    /// ignore them until they expire, and the announce that should replace the lost neighbours
    /// would carry none).
    fn announce(&mut self, now: Instant, i: usize, event: AnnounceEvent, lost: bool) {
        if self.trackers[i].link != (Link::Open { announcing: false }) {
            return;
        }
        // Offers still out (ours, unanswered) count towards what is wanted; after a loss only
        // beyond one announce's worth (so that a flapping neighbour count cannot pile up
        // connections: at most twice the offers per announce wait for answers).
        let out = self.conns.offers_out();
        let pending = if lost {
            out.saturating_sub(self.offers_per_announce)
        } else {
            out
        };
        let wanted = if self.is_source {
            // The source accepts viewers' offers; its own offers reach those that came first.
            self.swarm
                .config()
                .max_degree
                .saturating_sub(self.swarm.stats().neighbours)
        } else {
            self.swarm.wanted_neighbours()
        }
        .min(self.offers_per_announce)
        .saturating_sub(pending)
        .min(self.tracker_room());
        if wanted == 0 {
            self.send_announce(Batch {
                tracker: i,
                event,
                waiting: Vec::new(),
                offers: Vec::new(),
            });
            return;
        }
        self.trackers[i].set_announcing(true);
        let mut waiting = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let conn = self.conns.insert(now, None, true, Via::TrackerOffer(i));
            self.actions.push_back(Action::CreateOffer { conn });
            waiting.push(conn);
        }
        // Offers are made concurrently; the last one to finish sends the announce.
        self.batches.push(Batch {
            tracker: i,
            event,
            waiting,
            offers: Vec::new(),
        });
    }

    fn announce_request(&self, event: AnnounceEvent, offers: Vec<OfferOut>) -> TrackerRequest {
        let s = self.swarm.stats();
        TrackerRequest::Announce(Announce {
            info_hash: self.info_hash,
            peer_id: self.local,
            numwant: offers.len(),
            event,
            offers,
            uploaded: s.wire_bytes_up,
            downloaded: s.wire_bytes_down,
            seeder: self.is_source,
        })
    }

    fn send_announce(&mut self, b: Batch) {
        let i = b.tracker;
        if !self.trackers.get(i).is_some_and(|t| t.is_open()) {
            for (id, _) in b.offers {
                self.close_conn(id, CloseReason::Failed, false);
            }
            return;
        }
        let mut offers = Vec::with_capacity(b.offers.len());
        for (id, o) in b.offers {
            // Connections closed while their offers were made are not offered.
            if self.conns.get(id).is_some() {
                self.conns.offered(binstr::encode(&o.offer_id), id);
                offers.push(o);
            }
        }
        let request = self.announce_request(b.event, offers);
        self.actions.push_back(Action::TrackerSend {
            tracker: i,
            request,
        });
        // Hungry while neighbours are wanted and the swarm has peers we are not connected to
        // yet (unknown size counts as "has"). Live neighbours only: one silent for a second is
        // most likely gone, and counting it kept a viewer whose loss re-announce went to peers
        // it already had from announcing again for the tracker's whole interval.
        let t = &self.trackers[i];
        let others = t.swarm_size.map_or(usize::MAX, |n| n.saturating_sub(1));
        let live = self.swarm.live_neighbours();
        let hungry = self.swarm.wanted_neighbours() > 0 && others > live;
        self.trackers[i].announced(self.now, live, hungry);
    }

    fn on_tracker_message(&mut self, now: Instant, i: usize, message: TrackerMessage) {
        if !self.trackers.get(i).is_some_and(|t| t.is_open()) {
            return;
        }
        match message {
            TrackerMessage::Response {
                interval,
                complete,
                incomplete,
                warning: _,
            } => {
                let size = (complete.is_some() || incomplete.is_some()).then(|| {
                    complete
                        .unwrap_or(0)
                        .saturating_add(incomplete.unwrap_or(0))
                });
                self.trackers[i].response(interval, size);
            }
            TrackerMessage::Offer {
                peer,
                offer_id,
                sdp,
            } => {
                if self.tracker_room() == 0 {
                    return;
                }
                self.answer_offer(
                    now,
                    peer,
                    sdp,
                    Via::TrackerAnswer {
                        tracker: i,
                        offer_id,
                    },
                );
            }
            TrackerMessage::Answer {
                peer,
                offer_id,
                sdp,
            } => {
                let Some(id) = self.conns.take_offer(&offer_id) else {
                    return; // expired, or answered already through another tracker
                };
                if peer == self.local {
                    return;
                }
                match self.conns.claim(now, self.local, id, peer) {
                    Claim::Kept { replaced } => {
                        if let Some(old) = replaced {
                            self.close_conn(old, CloseReason::Duplicate, true);
                        }
                        self.apply_answer(id, sdp);
                    }
                    Claim::Lost => self.close_conn(id, CloseReason::Duplicate, false),
                }
            }
            TrackerMessage::Failure { reason: _ } => {}
        }
    }

    fn apply_answer(&mut self, id: ConnId, sdp: String) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if !c.offerer || c.answered {
            return;
        }
        c.answered = true;
        self.actions
            .push_back(Action::ApplyAnswer { conn: id, sdp });
    }

    /// Answers `peer`'s offer; the answer goes back the way the offer came (`via`).
    fn answer_offer(&mut self, now: Instant, peer: PeerId, sdp: String, via: Via) {
        // An attempt to reach `peer` that has not opened in STUCK_SETUP gives way, so that a
        // fresh offer between the two can take its place.
        if let Some(id) = self.conns.of_peer(&peer) {
            if self.conns.get(id).is_some_and(|c| c.stuck(now)) {
                self.close_conn(id, CloseReason::Stuck, false);
            }
        }
        if !self.room_for(&peer) {
            return;
        }
        let conn = self.conns.insert(now, Some(peer), false, via);
        self.actions.push_back(Action::AcceptOffer { conn, sdp });
    }

    fn on_offer_created(&mut self, now: Instant, conn: ConnId, sdp: String) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        match c.via {
            Via::TrackerOffer(_) => {
                let offer_id = self.rng.id20();
                let mut done = None;
                for (k, b) in self.batches.iter_mut().enumerate() {
                    if let Some(w) = b.waiting.iter().position(|x| *x == conn) {
                        b.waiting.swap_remove(w);
                        b.offers.push((conn, OfferOut { offer_id, sdp }));
                        if b.waiting.is_empty() {
                            done = Some(k);
                        }
                        break;
                    }
                }
                if let Some(k) = done {
                    let b = self.batches.swap_remove(k);
                    self.send_announce(b);
                }
            }
            Via::Relay => {
                if let Some(to) = c.peer {
                    let payload = SignalPayload::Offer(sdp).encode();
                    self.swarm
                        .handle_input(now, Input::SendSignal { to, payload });
                }
            }
            Via::TrackerAnswer { .. } => {}
        }
    }

    fn on_answer_created(&mut self, now: Instant, conn: ConnId, sdp: String) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        let Some(to) = c.peer else { return };
        match &c.via {
            Via::TrackerAnswer { tracker, offer_id } => {
                let tracker = *tracker;
                if self.trackers.get(tracker).is_some_and(|t| t.is_open()) {
                    let request = TrackerRequest::Answer {
                        info_hash: self.info_hash,
                        peer_id: self.local,
                        to,
                        offer_id: offer_id.clone(),
                        sdp,
                    };
                    self.actions
                        .push_back(Action::TrackerSend { tracker, request });
                }
            }
            Via::Relay => {
                let payload = SignalPayload::Answer(sdp).encode();
                self.swarm
                    .handle_input(now, Input::SendSignal { to, payload });
            }
            Via::TrackerOffer(_) => {}
        }
    }

    fn on_channel_open(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let Some(peer) = c.peer else { return };
        if c.open {
            return;
        }
        c.open = true;
        c.interrupted = None;
        if self.conns.of_peer(&peer) != Some(conn) {
            return;
        }
        self.swarm.handle_input(now, Input::Connected { peer });
    }

    /// The core learned of `peer` (peer exchange) and wants a connection: offer through the
    /// neighbour that told us.
    fn connect_via_relay(&mut self, now: Instant, peer: PeerId) {
        if peer == self.local || self.conns.of_peer(&peer).is_some() {
            return;
        }
        let conn = self.conns.insert(now, Some(peer), true, Via::Relay);
        self.actions.push_back(Action::CreateOffer { conn });
    }

    /// Signalling relayed by a neighbour from `from`.
    fn on_relayed_signal(&mut self, now: Instant, from: PeerId, payload: &[u8]) {
        match SignalPayload::decode(payload) {
            Some(SignalPayload::Offer(sdp)) => {
                if let Some(existing) = self.conns.of_peer(&from) {
                    // Both sides offered at once: the smaller id's offer wins on both ends.
                    let ours_pending = self
                        .conns
                        .get(existing)
                        .is_some_and(|c| c.offerer && !c.open);
                    if ours_pending && yield_to_crossing_offer(self.local, from) {
                        self.close_conn(existing, CloseReason::Crossing, false);
                    } else {
                        return;
                    }
                }
                self.answer_offer(now, from, sdp, Via::Relay);
            }
            Some(SignalPayload::Answer(sdp)) => {
                if let Some(id) = self.conns.of_peer(&from) {
                    self.apply_answer(id, sdp);
                }
            }
            // Not one of ours: ignored.
            None => {}
        }
    }

    /// Carries every core output over into actions.
    fn drain_swarm(&mut self, now: Instant) {
        while let Some(out) = self.swarm.poll_output() {
            match out {
                Output::Transmit { peer, data } => {
                    if let Some(conn) = self.conns.open_to(&peer) {
                        self.actions.push_back(Action::Send { conn, data });
                    }
                }
                Output::Disconnect { peer, reason } => {
                    if let Some(conn) = self.conns.of_peer(&peer) {
                        self.close_conn(conn, CloseReason::Core(reason), false);
                    }
                }
                Output::Init(init) => {
                    self.media.ever = true;
                    self.actions.push_back(Action::Init(init));
                }
                Output::Play(seg) => {
                    self.media.last = Some(now);
                    self.media.ever = true;
                    self.media.had_play = true;
                    self.actions.push_back(Action::Play(seg));
                }
                Output::Skip { seq } => self.actions.push_back(Action::Skip { seq }),
                Output::Connect { peer } => self.connect_via_relay(now, peer),
                Output::Signal { from, payload } => self.on_relayed_signal(now, from, &payload),
                // Not from inside this loop: rejoining replaces the core being drained.
                Output::SourceRestarted => self.rejoin_pending = true,
            }
        }
        if std::mem::take(&mut self.rejoin_pending) {
            self.rejoin(now, RejoinReason::SourceRestarted);
            self.drain_swarm(now);
        }
    }

    /// Starts over as a new viewer of the same stream: every connection given up, a fresh core
    /// under a fresh peer id, trackers re-announced, the player told to wait for a new init.
    fn rejoin(&mut self, now: Instant, reason: RejoinReason) {
        if self.is_source {
            return;
        }
        for id in self.conns.ids() {
            self.close_conn(id, CloseReason::Rejoin, false);
        }
        self.batches.clear();
        self.local = PeerId(self.rng.id20());
        let seed = self.rng.next();
        self.swarm = self.swarm.rejoin(self.local, seed);
        for i in 0..self.trackers.len() {
            if !matches!(self.trackers[i].link, Link::Idle { .. } | Link::Stopped) {
                self.actions.push_back(Action::TrackerClose { tracker: i });
            }
            if self.trackers[i].link != Link::Stopped {
                self.trackers[i].restart(now);
            }
        }
        self.media.had_play = false;
        self.next_housekeeping = now;
        self.actions.push_back(Action::Rejoined {
            peer: self.local,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
