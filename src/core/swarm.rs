//! The swarm state machine: one per peer (source or viewer) and stream.
//!
//! This file holds the public API and the handling of each input and message; the stripe trees
//! live in `stripes.rs`, pull repair in `scheduler.rs`, the send path in `sender.rs` and
//! playback order in `playout.rs`. PROTOCOL.md describes the behaviour normatively.

use super::bitfield::SeqBits;
use super::bucket::TokenBucket;
use super::id::{PeerId, StreamId};
use super::identity::{verify_piece, StreamKey, StreamVerifier};
use super::neighbour::{
    Neighbour, CLASS_REPLY, DEAD_SILENCE, IDLE_PING, MAX_QUEUE, RELEASE_SILENCE,
};
use super::rng::Rng;
use super::segment::{
    InitSegment, SegmentHeader, SegmentMeta, SignedHeader, MAX_INIT_SIZE, MAX_PIECES_PER_SEGMENT,
    PIECE_SIZE,
};
use super::store::{Segment, StoredPiece};
use super::time::Instant;
pub use super::wire::Role;
use super::wire::{
    Decoded, Message, RejectReason, WireError, MAX_BITFIELD_BYTES, MAX_PEX_PEERS, MAX_SIGNAL_SIZE,
    MAX_STRIPES, NO_DEPTH, PROTOCOL_VERSION,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Tunables. [`Config::default`] is what the browser uses; the simulator varies them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Upload this peer offers the swarm, kbit/s; 0 makes a receive-only peer. The browser cannot
    /// know its uplink in advance: it starts from a guess and the core adapts to what the
    /// transport actually drains.
    pub upload_kbps: u32,
    /// Source only: the most the source uploads, as a multiple of the stream's bitrate, whatever
    /// the audience size.
    pub source_cap_multiple: f32,
    /// Neighbours a viewer tries to keep.
    pub target_degree: usize,
    /// Neighbours a peer accepts at most.
    pub max_degree: usize,
    /// How far behind the newest segment data is still fetched and kept, in time.
    pub window: Duration,
    /// Delay between a segment's arrival deadline and playback: the player's buffer. A segment
    /// not complete by `first play time + (pts - first pts) + playout_delay` is skipped.
    pub playout_delay: Duration,
    /// Seed of the core's own PRNG (neighbour choice, tie breaks): the same seed, the same run.
    pub seed: u64,
    /// Stripes the stream is split into (piece `(seq, i)` travels on stripe `(seq + i) % K`).
    /// Every peer of a stream must use the same value; 1..=32.
    pub stripes: u8,
    /// Bytes a neighbour's transport may hold unsent before the core stops handing it data
    /// (the rest waits in the core's priority queue, where stale data can still be dropped).
    pub send_budget: usize,
    /// A stripe whose parent delivered nothing for this long while pieces of that stripe are
    /// known to be missing is resubscribed elsewhere (dead parents and loops look like this).
    pub stall_timeout: Duration,
    /// How long a piece may be expected from the push tree before it is pulled instead.
    pub pull_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upload_kbps: 8_000,
            source_cap_multiple: 3.0,
            target_degree: 8,
            max_degree: 24,
            window: Duration::from_secs(10),
            playout_delay: Duration::from_millis(1000),
            seed: 0,
            stripes: 4,
            send_budget: 64 * 1024,
            stall_timeout: Duration::from_millis(800),
            pull_grace: Duration::from_millis(800),
        }
    }
}

/// What happens to the swarm, told by the caller.
#[derive(Debug)]
pub enum Input<'a> {
    /// A transport (data channel) to `peer` opened. The core sends its handshake.
    Connected {
        /// The remote peer.
        peer: PeerId,
    },
    /// The transport to `peer` closed or failed.
    Disconnected {
        /// The remote peer.
        peer: PeerId,
    },
    /// One message arrived from `peer`.
    Receive {
        /// Sender.
        peer: PeerId,
        /// The message bytes as received.
        data: &'a [u8],
    },
    /// One message arrived from `peer`, in a buffer the core may keep: a piece is then stored
    /// and forwarded as a reference into `data` rather than copied (same effect as
    /// [`Input::Receive`] otherwise).
    ReceiveShared {
        /// Sender.
        peer: PeerId,
        /// The message bytes as received.
        data: Bytes,
    },
    /// How many bytes the transport to `peer` still holds unsent (a data channel's
    /// `bufferedAmount`): the core queues no more than the transport drains. Report it after
    /// sending a batch of transmits and when it falls (`bufferedamountlow`); a neighbour for which
    /// it is never reported is not throttled.
    Buffered {
        /// The remote peer.
        peer: PeerId,
        /// Bytes queued in the transport.
        bytes: usize,
    },
    /// Signalling the binding wants delivered to `to` through a common neighbour.
    SendSignal {
        /// Final recipient.
        to: PeerId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// Where playback is: the frame at the player's playhead was captured at `pts_us` (the
    /// segments' pts timeline). Report it while playing (stalls included), not while paused.
    /// Segments the player reaches without having them are then given up 0.3 s later, and
    /// pulled urgently before, even when the schedule fixed at the first play (first play +
    /// pts offset + playout delay) says later: a player that started late and caught up with
    /// the live edge would otherwise stall at every missing segment until that schedule
    /// reached it.
    Playhead {
        /// Capture time of the frame at the playhead, µs.
        pts_us: u64,
    },
    /// Time passed; nothing else happened.
    Timeout,
}

/// Why the core cut a neighbour off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Sent bytes that are not a valid message.
    Malformed(WireError),
    /// Sent data that failed verification: forged or corrupted. Not accepted again.
    Forged,
    /// Broke the protocol (no handshake first, wrong stream, wrong version, unsolicited data...).
    Protocol(&'static str),
    /// Sent more than any honest peer would.
    Flood,
    /// Gave too little for too long; replaced by a better neighbour.
    Useless,
    /// More neighbours than wanted.
    Surplus,
    /// This peer is shutting down.
    Leaving,
    /// The neighbour said goodbye (`Message::Goodbye`); close the transport.
    GoodbyeReceived,
    /// A neighbour previously cut off for misbehaviour tried again.
    Banned,
    /// Nothing arrived from it for [`crate::core::neighbour::DEAD_SILENCE`]: it vanished without
    /// a goodbye (killed tab, lost network).
    Silent,
}

/// A verified, complete media segment, in order, for the player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayableSegment {
    /// Sequence number.
    pub seq: u64,
    /// Init version it decodes with.
    pub init_version: u32,
    /// Presentation time, µs.
    pub pts_us: u64,
    /// Duration, µs.
    pub duration_us: u32,
    /// Starts with a keyframe.
    pub keyframe: bool,
    /// The source's clock when it published the segment (µs since the source's origin).
    pub published_us: u64,
    /// The container bytes.
    pub data: Vec<u8>,
}

/// What the core wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes to `peer` as one data channel message.
    Transmit {
        /// Recipient.
        peer: PeerId,
        /// One encoded message (shared: a piece's bytes are the stored copy's, not a new one).
        data: Bytes,
    },
    /// Close the transport to `peer`.
    Disconnect {
        /// The neighbour.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A verified init segment: (re)initialise the player with it.
    Init(Arc<InitSegment>),
    /// The next verified segment to play.
    Play(PlayableSegment),
    /// Segment `seq` will never be played (missed its deadline); playback continues after it.
    Skip {
        /// The segment given up on.
        seq: u64,
    },
    /// The core wants a connection to `peer`, learned through peer exchange: the binding creates
    /// an offer and hands it back as [`Input::SendSignal`].
    Connect {
        /// The peer to connect to.
        peer: PeerId,
    },
    /// Signalling from `from`, relayed by a neighbour.
    Signal {
        /// Originator.
        from: PeerId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// The source started the stream over (a reloaded broadcaster page numbers its segments from
    /// 0 again): a genuine header came whose sequence number is at or behind the newest we hold
    /// but whose capture time is later. This state is useless now; the binding starts a fresh
    /// viewer (new peer id, new connections). Emitted once.
    SourceRestarted,
}

/// Why the source could not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// This swarm is a viewer.
    #[error("only the source publishes")]
    NotSource,
    /// No init segment was published yet.
    #[error("publish an init segment first")]
    NoInit,
    /// Empty or larger than the protocol allows.
    #[error("segment of {len} bytes is outside 1..={max}")]
    BadSize {
        /// Bytes given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Per-neighbour figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NeighbourStats {
    /// Payload bytes sent to it.
    pub bytes_up: u64,
    /// Payload bytes received from it.
    pub bytes_down: u64,
    /// It is the source.
    pub is_source: bool,
    /// Round-trip estimate, if any.
    pub rtt: Option<Duration>,
    /// Bit `s`: it receives stripe `s` from us.
    pub child_stripes: u64,
    /// Bit `s`: we receive stripe `s` from it.
    pub parent_stripes: u64,
}

/// This peer's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Current neighbours (handshake done).
    pub neighbours: usize,
    /// Payload bytes received from the source directly.
    pub bytes_from_source: u64,
    /// Payload bytes received from other viewers.
    pub bytes_from_peers: u64,
    /// Payload bytes uploaded.
    pub bytes_up: u64,
    /// All bytes sent, including control messages.
    pub wire_bytes_up: u64,
    /// All bytes received, including control messages.
    pub wire_bytes_down: u64,
    /// Segments handed to the player.
    pub segments_played: u64,
    /// Segments skipped (missed deadline).
    pub segments_skipped: u64,
    /// Neighbours cut off for forged data.
    pub forgers_cut: u64,
    /// Newest segment seen (header verified).
    pub newest_seq: Option<u64>,
    /// Payload bytes received that were already held (push/pull overlap).
    pub duplicate_bytes: u64,
    /// Stream bitrate estimated from signed headers (segment bytes / duration), kbit/s.
    pub bitrate_kbps: u32,
    /// Depth in each stripe tree (0 = source, 255 = not receiving).
    pub stripe_depths: Vec<u8>,
    /// `now - published_us` of the last played segment: the live latency from publication to
    /// playback when the caller's clock and the source's share an origin (simulator, tests).
    pub play_lag: Option<Duration>,
    /// Pieces pulled by request (repairs) rather than pushed.
    pub pieces_pulled: u64,
    /// Stripe parents abandoned because they stalled.
    pub stalls: u64,
    /// **Insufficient swarm capacity**: this viewer has gone without a parent on some stripe
    /// for 2 s or more because no neighbour has upload to spare for it. The player should say
    /// so ("not enough upload in this swarm"), not just buffer. Cleared once every stripe has a
    /// parent again.
    pub capacity_short: bool,
}

/// Per-stripe state of a viewer: where it receives the stripe from.
#[derive(Debug, Clone)]
pub(crate) struct StripeState {
    /// The accepted parent.
    pub parent: Option<PeerId>,
    /// A subscription sent and not yet answered: `(to, sent at)`.
    pub pending: Option<(PeerId, Instant)>,
    /// Hops from the source; [`NO_DEPTH`] when not receiving.
    pub depth: u8,
    /// Depth before the parent was lost: new parents are first sought above it (loop guard).
    pub old_depth: u8,
    /// Last time the parent delivered a piece of this stripe (or accepted us).
    pub last_push: Instant,
    /// When the current parent accepted us: it pushes what it receives from then on (and the
    /// newest segment it held), so older pieces of this stripe must be pulled.
    pub parent_since: Instant,
    /// Neighbours not to ask for this stripe until the given time (refused, stalled).
    pub avoid: Vec<(PeerId, Instant)>,
}

/// Playback state of a viewer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Playout {
    /// First segment to play, once chosen.
    pub start: Option<u64>,
    /// When the start was chosen.
    pub start_at: Instant,
    /// Next segment to hand to the player.
    pub next: u64,
    /// Local time of the first Play and the pts it played.
    pub t0: Option<(Instant, u64)>,
    /// The player's last [`Input::Playhead`]: when, and the pts it was at.
    pub playhead: Option<(Instant, u64)>,
    /// Init version last handed to the player.
    pub init_emitted: Option<u32>,
    /// The segment asked for to learn a start point, and when.
    pub probe: Option<(u64, Instant)>,
}

/// The maintenance period: stall checks, pulls, status updates.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Most messages per second a neighbour may send (pieces at 8 Mbit/s are ~60/s).
const FLOOD_MESSAGES_PER_SEC: u32 = 4000;
/// Most relayed signalling messages per second per neighbour.
const FLOOD_RELAYS_PER_SEC: u32 = 32;
/// Ping period per neighbour.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A gap this long between two inputs means this peer was not running (the binding feeds a
/// timeout at least every [`TICK`] while it has neighbours).
const FREEZE_GAP: Duration = Duration::from_millis(1_000);
/// A `Connect` not followed by `Connected` within this is forgotten.
const CONNECT_EXPIRY: Duration = Duration::from_secs(15);
/// Peer-exchange period.
const PEX_INTERVAL: Duration = Duration::from_secs(20);

/// One peer's view of one stream.
pub struct Swarm {
    pub(crate) config: Config,
    pub(crate) stream: StreamId,
    pub(crate) local: PeerId,
    pub(crate) key: Option<StreamKey>,
    pub(crate) verifier: Option<StreamVerifier>,
    pub(crate) rng: Rng,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    pub(crate) k: usize,
    pub(crate) neighbours: BTreeMap<PeerId, Neighbour>,
    pub(crate) banned: BTreeSet<PeerId>,
    /// Peers learned by exchange → the neighbour that told us (relay for signalling).
    pub(crate) pex: BTreeMap<PeerId, PeerId>,
    /// `Connect` outputs awaiting `Connected`.
    pub(crate) connecting: BTreeMap<PeerId, Instant>,
    /// Peers we asked to connect to before: not again before the given time.
    pub(crate) connect_backoff: BTreeMap<PeerId, Instant>,
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// Complete segments (for bitfields).
    pub(crate) complete: SeqBits,
    /// Nothing below this seq is kept, fetched or sent.
    pub(crate) window_start: u64,
    /// Highest seq any neighbour advertised complete, and when it was first seen.
    pub(crate) max_advertised: Option<(u64, Instant)>,
    /// Segments asked for without knowing their header: `seq → (neighbour, sent at)`.
    pub(crate) blind: BTreeMap<u64, (PeerId, Instant)>,
    pub(crate) inits: BTreeMap<u32, Arc<InitSegment>>,
    /// Recent `(len, duration, keyframe)` of segments, for the bitrate estimate.
    pub(crate) recent_sizes: VecDeque<(u64, u64, bool)>,
    pub(crate) stripes: Vec<StripeState>,
    /// Per stripe, the neighbours that subscribed it from us.
    pub(crate) children: Vec<Vec<PeerId>>,
    pub(crate) bucket: TokenBucket,
    pub(crate) playout: Playout,
    pub(crate) next_tick: Instant,
    pub(crate) next_pex: Instant,
    pub(crate) next_upgrade: Instant,
    /// Since when some stripe has had no parent (capacity signal).
    pub(crate) short_since: Option<Instant>,
    pub(crate) status_dirty: bool,
    /// Round-robin cursor of the send path.
    pub(crate) rr: u64,
    pub(crate) next_seq: u64,
    pub(crate) init_version: u32,
    pub(crate) now: Instant,
    /// [`Output::SourceRestarted`] was emitted.
    pub(crate) restarted: bool,
    /// The genuine header that showed the source restarted (from the detection on this swarm,
    /// or handed on by [`Swarm::rejoin`]): the newest session known, so that the older one is
    /// recognised even before any header of the new one is held, and shown to neighbours still
    /// following the older one.
    pub(crate) session: Option<Arc<SignedHeader>>,
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
        let stripes = vec![
            StripeState {
                parent: None,
                pending: None,
                depth,
                old_depth: NO_DEPTH,
                last_push: Instant::ZERO,
                parent_since: Instant::ZERO,
                avoid: Vec::new(),
            };
            k
        ];
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
            key,
            outputs: VecDeque::new(),
            stats,
            k,
            neighbours: BTreeMap::new(),
            banned: BTreeSet::new(),
            pex: BTreeMap::new(),
            connecting: BTreeMap::new(),
            connect_backoff: BTreeMap::new(),
            segments: BTreeMap::new(),
            complete: SeqBits::default(),
            window_start: 0,
            max_advertised: None,
            blind: BTreeMap::new(),
            inits: BTreeMap::new(),
            recent_sizes: VecDeque::new(),
            stripes,
            children: vec![Vec::new(); k],
            bucket: TokenBucket::new(0, 0, Instant::ZERO),
            playout: Playout::default(),
            next_tick: Instant::ZERO,
            next_pex: Instant::ZERO,
            next_upgrade: Instant::ZERO,
            short_since: None,
            status_dirty: false,
            rr: 0,
            next_seq: 0,
            init_version: 0,
            now: Instant::ZERO,
            restarted: false,
            session: None,
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
        next.session = self.session.clone();
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
        self.key.is_some()
    }

    /// Feeds one event at `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if now.saturating_duration_since(self.now) > FREEZE_GAP {
            // We ourselves were not running (a frozen tab, a suspended laptop): whatever the
            // neighbours sent meanwhile is still queued for us, so their silence proves nothing.
            for n in self.neighbours.values_mut() {
                n.last_heard = now;
            }
        }
        self.now = self.now.max(now);
        let now = self.now;
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
            Input::Playhead { pts_us } => self.playout.playhead = Some((now, pts_us)),
            Input::Timeout => {}
        }
        if now >= self.next_tick {
            self.tick(now);
        }
        self.after_input(now);
    }

    /// Work done after every input: playback, then handing queued data to transports.
    fn after_input(&mut self, now: Instant) {
        if !self.is_source() {
            if self.playout.t0.is_none() && !self.neighbours.is_empty() {
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

    /// When the core next needs [`Input::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                t = Some(t.map_or(at, |t| t.min(at)));
            }
        };
        if !self.neighbours.is_empty() || !self.connecting.is_empty() {
            consider(Some(self.next_tick));
        }
        consider(self.playout_deadline());
        if !self.bucket.ready() && self.neighbours.values().any(|n| !n.queue.is_empty()) {
            consider(self.bucket.ready_at());
        }
        t.map(|t| t.max(self.now))
    }

    /// Source: publishes (a new version of) the init segment.
    pub fn publish_init(
        &mut self,
        now: Instant,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<u32, PublishError> {
        self.now = self.now.max(now);
        let Some(key) = &self.key else {
            return Err(PublishError::NotSource);
        };
        if data.len() > MAX_INIT_SIZE || mime.len() > super::segment::MAX_MIME_LEN {
            return Err(PublishError::BadSize {
                len: data.len(),
                max: MAX_INIT_SIZE,
            });
        }
        self.init_version += 1;
        let init = Arc::new(key.sign_init(self.init_version, mime.to_owned(), data));
        self.inits.insert(init.version, init);
        self.prune_inits();
        let peers: Vec<PeerId> = self.established().collect();
        for p in peers {
            self.send_init(p);
        }
        let now = self.now;
        self.flush(now);
        Ok(self.init_version)
    }

    /// Source: publishes the next media segment; returns its sequence number.
    pub fn publish_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        self.now = self.now.max(now);
        let now = self.now;
        let Some(key) = &self.key else {
            return Err(PublishError::NotSource);
        };
        if self.init_version == 0 {
            return Err(PublishError::NoInit);
        }
        let max = MAX_PIECES_PER_SEGMENT * PIECE_SIZE;
        if data.is_empty() || data.len() > max {
            return Err(PublishError::BadSize {
                len: data.len(),
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let header = SegmentHeader::describe(seq, self.init_version, meta, now.as_micros(), &data);
        let signed = Arc::new(key.sign_header(header));
        self.insert_header(now, signed);
        for (i, chunk) in data.chunks(PIECE_SIZE).enumerate() {
            let piece = StoredPiece::encode(seq, i as u16, chunk);
            self.store_piece(now, seq, i, piece, None);
        }
        self.flush(now);
        Ok(seq)
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
            .saturating_sub(alive + self.connecting.len())
    }

    /// Neighbours (handshake done) heard from within the last second. When this falls the
    /// binding asks the tracker for more at once rather than at its next periodic announce: the
    /// lost ones may have been this viewer's only path to the data.
    pub fn live_neighbours(&self) -> usize {
        self.neighbours
            .values()
            .filter(|n| n.established && !n.silent(self.now))
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
            .filter(|(_, n)| n.established)
            .map(|(id, n)| {
                (
                    *id,
                    NeighbourStats {
                        bytes_up: n.bytes_up,
                        bytes_down: n.bytes_down,
                        is_source: n.role == Role::Source,
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
        self.neighbours
            .iter()
            .filter(|(_, n)| n.established)
            .map(|(id, _)| *id)
    }

    fn on_connected(&mut self, now: Instant, peer: PeerId) {
        self.connecting.remove(&peer);
        if self.banned.contains(&peer) {
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
        self.banned.insert(peer);
        self.pex.remove(&peer);
        self.drop_neighbour(now, peer, reason);
    }

    fn drop_neighbour(&mut self, now: Instant, peer: PeerId, reason: DisconnectReason) {
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
                self.children[s].retain(|c| *c != peer);
                self.status_dirty = true;
            }
        }
        for (seq, _) in n.requests {
            if let Some(seg) = self.segments.get_mut(&seq) {
                seg.requests.retain(|(p, _, _)| *p != peer);
                seg.requested = seg.requests.iter().fold(0, |m, r| m | r.1);
            }
        }
        self.blind.retain(|_, (p, _)| *p != peer);
        self.pex.retain(|cand, via| *via != peer && *cand != peer);
        let mut lost = false;
        for s in 0..self.k {
            let st = &mut self.stripes[s];
            if st.parent == Some(peer) {
                st.parent = None;
                st.old_depth = st.depth;
                st.depth = NO_DEPTH;
                lost = true;
            }
            if st.pending.is_some_and(|(p, _)| p == peer) {
                st.pending = None;
                lost = true;
            }
        }
        self.stats.neighbours = self.neighbours.values().filter(|n| n.established).count();
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
        if !self.neighbours.contains_key(&peer) {
            // Late data from a neighbour already dropped, or a transport never announced.
            return;
        }
        self.stats.wire_bytes_down += data.len() as u64;
        {
            let n = self.neighbours.get_mut(&peer).expect("checked above");
            n.last_heard = now;
            if now.saturating_duration_since(n.flood_window) >= Duration::from_secs(1) {
                n.flood_window = now;
                n.flood_msgs = 0;
                n.flood_relays = 0;
            }
            n.flood_msgs += 1;
            if n.flood_msgs > FLOOD_MESSAGES_PER_SEC {
                self.cut(now, peer, DisconnectReason::Flood);
                return;
            }
        }
        let msg = match Message::decode_borrowed(data) {
            Ok(m) => m,
            Err(e) => {
                self.cut(now, peer, DisconnectReason::Malformed(e));
                return;
            }
        };
        let established = self.neighbours.get(&peer).is_some_and(|n| n.established);
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
        {
            let n = self.neighbours.get_mut(&peer).expect("caller checked");
            n.established = true;
            n.role = role;
            n.upload_kbps = upload_kbps;
            n.next_ping = now;
            n.last_useful = now;
        }
        self.stats.neighbours = self.neighbours.values().filter(|n| n.established).count();
        // What a new neighbour needs at once: our availability, our stripe positions, the init
        // segment, some peers, and a first RTT sample.
        let bitfield = self.bitfield();
        self.send(peer, &bitfield);
        let status = self.status_message();
        self.send(peer, &status);
        self.send_init(peer);
        self.send_pex(peer);
        self.ping(now, peer);
    }

    fn bitfield(&self) -> Message {
        let base = self.window_start & !7;
        let top = self.complete.max().unwrap_or(0);
        let mut bits = Vec::new();
        if top >= base {
            let span = ((top - base + 1) as usize).min(MAX_BITFIELD_BYTES * 8);
            bits = vec![0u8; span.div_ceil(8)];
            for i in 0..span {
                if self.complete.contains(base + i as u64) {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
        }
        Message::Bitfield { base, bits }
    }

    pub(crate) fn send_init(&mut self, peer: PeerId) {
        let Some((&v, init)) = self.inits.iter().next_back() else {
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

    fn send_pex(&mut self, peer: PeerId) {
        let mut peers: Vec<PeerId> = self.established().filter(|p| *p != peer).collect();
        // A random sample, so that different neighbours learn different peers.
        while peers.len() > MAX_PEX_PEERS {
            let i = self.rng.below(peers.len() as u64) as usize;
            peers.swap_remove(i);
        }
        if !peers.is_empty() {
            self.send(peer, &Message::Peers { peers });
        }
    }

    fn ping(&mut self, now: Instant, peer: PeerId) {
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
            Message::Handshake { .. } | Message::Piece { .. } => {
                unreachable!("handled in on_receive")
            }
            Message::Bitfield { base, bits } => {
                let n = self.neighbours.get_mut(&peer).expect("established");
                n.haves.insert_bitfield(base, &bits);
                if let Some(max) = n.haves.max() {
                    self.probe_session(peer, max);
                    self.advertised(now, peer, max);
                }
            }
            Message::Have { seq } => {
                let n = self.neighbours.get_mut(&peer).expect("established");
                n.haves.insert(seq);
                self.probe_session(peer, seq);
                self.advertised(now, peer, seq);
            }
            Message::Header(signed) => self.on_header(now, peer, signed),
            Message::Request { seq, pieces } => self.on_request(peer, seq, pieces),
            Message::Cancel { seq } => {
                let n = self.neighbours.get_mut(&peer).expect("established");
                let doomed: Vec<_> = n
                    .queue
                    .range((CLASS_REPLY, seq, 0)..=(CLASS_REPLY, seq, u16::MAX))
                    .copied()
                    .collect();
                for item in doomed {
                    n.queue.remove(&item);
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
                for p in peers {
                    if p != self.local && !self.banned.contains(&p) {
                        self.pex.entry(p).or_insert(peer);
                    }
                }
                // bounded memory: forget the oldest-keyed candidates beyond a limit
                while self.pex.len() > 256 {
                    let victim = *self.pex.keys().next().expect("non-empty");
                    self.pex.remove(&victim);
                }
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
                    let n = self.neighbours.get_mut(&peer).expect("established");
                    n.rtt_sample(Duration::from_micros(now.as_micros() - token));
                }
            }
        }
    }

    /// A neighbour announced segment `seq`, numbered behind our newest (or at it, and we lack
    /// it): if the source restarted, that is a segment of its new session (numbered from 0
    /// again), and the segment we hold under that number is the old session's. Its header
    /// settles it in one round trip (a restart is recognised by a later capture time), instead of
    /// waiting for a stripe to bring one, which never happens when the neighbours that follow the
    /// new session are not our parents. Asked once per neighbour, so a stale claim costs one
    /// small request; a viewer whose newest is old-session segment 45 and which holds segments
    /// 0..=45 of that session (it joined at the start) is told by its first new-session
    /// neighbour.
    fn probe_session(&mut self, peer: PeerId, seq: u64) {
        if self.is_source() || self.restarted {
            return;
        }
        let Some(newest) = self.stats.newest_seq else {
            return;
        };
        if seq > newest || (seq == newest && self.segments.contains_key(&seq)) {
            return;
        }
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.restart_probed || n.stale_session {
            return;
        }
        n.restart_probed = true;
        self.send(peer, &Message::Request { seq, pieces: 0 });
    }

    fn advertised(&mut self, now: Instant, peer: PeerId, seq: u64) {
        if self.neighbours.get(&peer).is_some_and(|n| n.stale_session) {
            // An older session's numbers say nothing about where ours is.
            return;
        }
        // A claim far beyond the newest verified header is a lie (or from another era): ignored.
        if self
            .stats
            .newest_seq
            .is_some_and(|n| seq > n.saturating_add(256))
        {
            return;
        }
        if self.max_advertised.is_none_or(|(m, _)| seq > m) {
            self.max_advertised = Some((seq, now));
        }
    }

    fn on_init(&mut self, now: Instant, peer: PeerId, init: InitSegment) {
        if self.inits.contains_key(&init.version) {
            return;
        }
        let ok = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.verify_init(&init).is_ok());
        if !ok {
            return self.cut(now, peer, DisconnectReason::Forged);
        }
        if self.is_source() {
            return;
        }
        let newest = self.inits.keys().next_back().copied().unwrap_or(0);
        let version = init.version;
        self.inits.insert(version, Arc::new(init));
        self.prune_inits();
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.init_sent = n.init_sent.max(version);
        }
        if version > newest {
            let peers: Vec<PeerId> = self.established().collect();
            for p in peers {
                self.send_init(p);
            }
        }
    }

    fn prune_inits(&mut self) {
        while self.inits.len() > 4 {
            let oldest = *self.inits.keys().next().expect("non-empty");
            self.inits.remove(&oldest);
        }
    }

    fn on_header(&mut self, now: Instant, peer: PeerId, signed: SignedHeader) {
        let seq = signed.header.seq;
        if self.is_restart(&signed) {
            // Checked cheaply first: a replayed old header has an older capture time and never
            // gets here, so only a genuine new session (or a forgery, cut) costs a verification.
            if !self.header_genuine(now, peer, &signed) {
                return;
            }
            if !self.restarted {
                self.restarted = true;
                // Passed on to every neighbour before this state is dropped: those that have not
                // noticed yet do so at once, whoever they are connected to (a viewer whose only
                // path to the new session is through us would otherwise wait for silence).
                let others: Vec<PeerId> = self.established().filter(|p| *p != peer).collect();
                self.send_each(&others, &Message::Header(signed.clone()));
                self.session = Some(Arc::new(signed));
                self.outputs.push_back(Output::SourceRestarted);
            }
            return;
        }
        if self.is_stale_session(&signed) {
            self.on_stale_session(peer);
            return;
        }
        if seq < self.window_start {
            return;
        }
        if let Some(seg) = self.segments.get(&seq) {
            if *seg.header == signed {
                return;
            }
        }
        if !self.header_genuine(now, peer, &signed) {
            return;
        }
        if self.segments.contains_key(&seq) || self.is_source() {
            // A second valid header for one seq would mean the source equivocates: keep the first.
            return;
        }
        self.insert_header(now, Arc::new(signed));
    }

    /// Checks a header's signature; a bad one cuts `peer` off as a forger.
    fn header_genuine(&mut self, now: Instant, peer: PeerId, signed: &SignedHeader) -> bool {
        let ok = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.verify_header(signed).is_ok());
        if !ok {
            self.cut(now, peer, DisconnectReason::Forged);
        }
        ok
    }

    /// Whether `signed` (not yet verified) would mean a new session of the source: numbered at or
    /// behind the newest header held, captured after it. Within one session capture times grow
    /// with sequence numbers.
    fn is_restart(&self, signed: &SignedHeader) -> bool {
        if self.is_source() {
            return false;
        }
        let Some(newest) = self.stats.newest_seq else {
            return false;
        };
        let Some(top) = self.segments.get(&newest) else {
            return false;
        };
        signed.header.seq <= newest && signed.header.pts_us > top.header.header.pts_us
    }

    /// Whether `signed` comes from an earlier session of the source than the one we follow:
    /// captured before a header we hold with a lower number (or before the session header a
    /// rejoin handed on, numbered below it). Within one session capture times grow with sequence
    /// numbers. Neighbours that have not yet noticed a restart still hold and offer the old
    /// session's segments, under numbers beyond our newest or, when asked, under the numbers of
    /// ours; a viewer that rejoined must not play them. Ignored, not cut: the sender is behind,
    /// not lying.
    fn is_stale_session(&self, signed: &SignedHeader) -> bool {
        let (seq, pts) = (signed.header.seq, signed.header.pts_us);
        let older = |top: &SignedHeader| top.header.seq < seq && pts < top.header.pts_us;
        self.segments
            .range(..seq)
            .next_back()
            .is_some_and(|(_, below)| older(&below.header))
            || self.session.as_ref().is_some_and(|top| older(top))
    }

    /// The header of our newest segment, else the session header handed on by a rejoin.
    fn newest_header(&self) -> Option<Arc<SignedHeader>> {
        self.stats
            .newest_seq
            .and_then(|n| self.segments.get(&n))
            .map(|s| s.header.clone())
            .or_else(|| self.session.clone())
    }

    /// `peer` offered a header of an older session: it has not noticed that the source
    /// restarted. It is shown our newest header once (a genuine header of the newer session
    /// makes it notice and rejoin), and from then on what it advertises or pushes is ignored,
    /// not held against it: it is behind, not lying.
    fn on_stale_session(&mut self, peer: PeerId) {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.stale_session {
            return;
        }
        n.stale_session = true;
        if let Some(top) = self.newest_header() {
            self.send(peer, &Message::Header((*top).clone()));
        }
        // Its numbers may have pushed the highest advertised segment beyond our session's.
        self.max_advertised = self
            .neighbours
            .values()
            .filter(|n| !n.stale_session)
            .filter_map(|n| n.haves.max())
            .max()
            .map(|m| (m, self.max_advertised.map_or(self.now, |(_, at)| at)));
    }

    /// Stores a verified header, updates the bitrate estimate and slides the window.
    fn insert_header(&mut self, now: Instant, signed: Arc<SignedHeader>) {
        let seq = signed.header.seq;
        let msg = Bytes::from(Message::Header((*signed).clone()).encode());
        self.recent_sizes.push_back((
            signed.header.len as u64,
            signed.header.duration_us as u64,
            signed.header.keyframe,
        ));
        while self.recent_sizes.len() > RATE_WINDOW {
            self.recent_sizes.pop_front();
        }
        if let Some(kbps) = bitrate_kbps(&self.recent_sizes) {
            self.stats.bitrate_kbps = kbps.min(u32::MAX as u64) as u32;
        }
        let was_blind = self.blind.remove(&seq);
        let mut seg = Segment::new(signed, msg, now);
        if let Some((p, at)) = was_blind {
            // The blind request becomes an ordinary one for every piece.
            seg.requests.push((p, seg.full, at));
            seg.requested = seg.full;
            if let Some(n) = self.neighbours.get_mut(&p) {
                n.requests.insert(seq, seg.full);
                n.requested_pieces += seg.full.count_ones();
            }
        }
        self.segments.insert(seq, seg);
        if self.stats.newest_seq.is_none_or(|n| seq > n) {
            self.stats.newest_seq = Some(seq);
            self.slide_window();
            self.status_dirty |= self.is_source() && self.stats.bitrate_kbps > 0;
        }
        if !self.is_source() {
            self.maybe_choose_start(now);
        }
    }

    /// Drops segments older than the window behind the newest one.
    fn slide_window(&mut self) {
        let Some(newest) = self.stats.newest_seq else {
            return;
        };
        let Some(top) = self.segments.get(&newest) else {
            return;
        };
        let cutoff = top
            .header
            .header
            .pts_us
            .saturating_sub(self.config.window.as_micros() as u64);
        let mut start = self.window_start;
        while let Some((&seq, seg)) = self.segments.first_key_value() {
            if (seg.header.header.pts_us < cutoff && seq < newest) || newest - seq > 1024 {
                let seg = self.segments.remove(&seq).expect("present");
                for (p, _, _) in seg.requests {
                    if let Some(n) = self.neighbours.get_mut(&p) {
                        if let Some(m) = n.requests.remove(&seq) {
                            n.requested_pieces -= m.count_ones();
                        }
                    }
                }
                start = start.max(seq + 1);
            } else {
                break;
            }
        }
        if start != self.window_start {
            self.window_start = start;
            self.complete.forget_below(start);
            self.blind = self.blind.split_off(&start);
            for n in self.neighbours.values_mut() {
                n.haves.forget_below(start);
                n.headers_sent.forget_below(start);
                let stale: Vec<_> = n
                    .queue
                    .iter()
                    .filter(|(_, s, _)| *s < start)
                    .copied()
                    .collect();
                for it in stale {
                    n.queue.remove(&it);
                }
            }
        }
    }

    fn on_piece(
        &mut self,
        now: Instant,
        peer: PeerId,
        seq: u64,
        index: u16,
        data: &[u8],
        shared: Option<&Bytes>,
    ) {
        if seq < self.window_start {
            return;
        }
        let idx = index as usize;
        let Some(seg) = self.segments.get(&seq) else {
            if self.neighbours.get(&peer).is_some_and(|n| n.stale_session) {
                // A piece of an older session, whose header we ignored.
                return;
            }
            return self.cut(
                now,
                peer,
                DisconnectReason::Protocol("piece before its header"),
            );
        };
        if idx >= seg.pieces.len() {
            return self.cut(
                now,
                peer,
                DisconnectReason::Protocol("piece index out of range"),
            );
        }
        let is_source = self
            .neighbours
            .get(&peer)
            .is_some_and(|n| n.role == Role::Source);
        if let Some(held) = &seg.pieces[idx] {
            // Already held: compare rather than hash; a differing copy is a forgery all the same.
            if !held.same_payload(data) {
                return self.cut(now, peer, DisconnectReason::Forged);
            }
            self.stats.duplicate_bytes += data.len() as u64;
            let n = self.neighbours.get_mut(&peer).expect("established");
            n.duplicates += 1;
            n.bytes_down += data.len() as u64;
            self.note_parent_progress(now, peer, seq, idx);
            return;
        }
        if verify_piece(&seg.header.header, idx, data).is_err() {
            return self.cut(now, peer, DisconnectReason::Forged);
        }
        {
            let n = self.neighbours.get_mut(&peer).expect("established");
            n.bytes_down += data.len() as u64;
            n.useful += 1;
            n.last_useful = now;
        }
        if is_source {
            self.stats.bytes_from_source += data.len() as u64;
        } else {
            self.stats.bytes_from_peers += data.len() as u64;
        }
        self.note_parent_progress(now, peer, seq, idx);
        let piece = match shared {
            Some(msg) => StoredPiece::from_received(msg, seq, index, data),
            None => StoredPiece::encode(seq, index, data),
        };
        self.store_piece(now, seq, idx, piece, Some(peer));
    }

    /// Stores a verified piece; forwards it to the stripe's children at once; announces and
    /// cancels as the segment completes.
    pub(crate) fn store_piece(
        &mut self,
        now: Instant,
        seq: u64,
        idx: usize,
        data: StoredPiece,
        from: Option<PeerId>,
    ) {
        let k = self.k;
        let Some(seg) = self.segments.get_mut(&seq) else {
            return;
        };
        seg.pieces[idx] = Some(data);
        let bit = 1u64 << idx;
        seg.have |= bit;
        // Requests for this piece elsewhere are now moot.
        let mut cancels = Vec::new();
        if seg.requested & bit != 0 {
            for r in seg.requests.iter_mut() {
                if r.1 & bit != 0 {
                    r.1 &= !bit;
                    if Some(r.0) == from {
                        self.stats.pieces_pulled += 1;
                    } else if r.1 == 0 {
                        cancels.push(r.0);
                    }
                    if let Some(n) = self.neighbours.get_mut(&r.0) {
                        n.requested_pieces = n.requested_pieces.saturating_sub(1);
                        match n.requests.get_mut(&seq) {
                            Some(m) if *m & !bit == 0 => {
                                n.requests.remove(&seq);
                            }
                            Some(m) => *m &= !bit,
                            None => {}
                        }
                    }
                }
            }
            seg.requests.retain(|r| r.1 != 0);
            seg.requested &= !bit;
        }
        let complete = seg.complete();
        if complete {
            seg.tried.clear();
        }
        // Push to the stripe's children, except the one it came from and those holding it.
        let stripe = ((seq + idx as u64) % k as u64) as usize;
        let children = std::mem::take(&mut self.children[stripe]);
        for c in &children {
            if Some(*c) == from {
                continue;
            }
            if let Some(n) = self.neighbours.get_mut(c) {
                if !n.haves.contains(seq) && n.queue.len() < MAX_QUEUE {
                    n.queue
                        .insert((super::neighbour::CLASS_PUSH, seq, idx as u16));
                }
            }
        }
        self.children[stripe] = children;
        for p in cancels {
            self.send(p, &Message::Cancel { seq });
        }
        if complete {
            self.complete.insert(seq);
            let peers: Vec<PeerId> = self.established().collect();
            self.send_each(&peers, &Message::Have { seq });
            let _ = now;
        }
    }

    fn on_request(&mut self, peer: PeerId, seq: u64, pieces: u64) {
        let Some(seg) = self.segments.get(&seq) else {
            return;
        };
        if pieces == 0 {
            // Header only (a joining peer looking for a keyframe to start at): small, answered
            // at once by everyone.
            let msg = seg.header_msg.clone();
            let n = self.neighbours.get_mut(&peer).expect("established");
            if !n.headers_sent.contains(seq) {
                n.headers_sent.insert(seq);
                self.transmit(peer, msg, 0, false);
            }
            return;
        }
        if self.usable_upload_kbps() == 0 && !self.is_source() {
            return; // receive-only peers serve no pieces
        }
        let wanted = pieces & seg.have;
        let n = self.neighbours.get_mut(&peer).expect("established");
        let mut bits = wanted;
        while bits != 0 {
            let i = bits.trailing_zeros() as u16;
            bits &= bits - 1;
            if n.queue.len() >= MAX_QUEUE {
                break;
            }
            n.queue.insert((CLASS_REPLY, seq, i));
        }
    }

    fn on_relay(&mut self, now: Instant, peer: PeerId, from: PeerId, to: PeerId, payload: Vec<u8>) {
        {
            let n = self.neighbours.get_mut(&peer).expect("established");
            n.flood_relays += 1;
            if n.flood_relays > FLOOD_RELAYS_PER_SEC {
                return self.cut(now, peer, DisconnectReason::Flood);
            }
        }
        if to == self.local {
            if !self.banned.contains(&from) {
                // The answer goes back the way the offer came, even if no peer exchange named
                // `from` to us yet.
                self.pex.entry(from).or_insert(peer);
                // It is connecting to us: do not also offer to it (glare).
                self.connect_backoff
                    .insert(from, now + Duration::from_secs(60));
                self.outputs.push_back(Output::Signal { from, payload });
            }
        } else if from == peer && self.neighbours.get(&to).is_some_and(|n| n.established) {
            self.send(to, &Message::Relay { from, to, payload });
        }
    }

    fn on_send_signal(&mut self, to: PeerId, payload: Vec<u8>) {
        if payload.len() > MAX_SIGNAL_SIZE {
            return;
        }
        let via = self
            .pex
            .get(&to)
            .copied()
            .filter(|v| self.neighbours.get(v).is_some_and(|n| n.established));
        if let Some(via) = via {
            let from = self.local;
            self.send(via, &Message::Relay { from, to, payload });
        }
    }

    /// Encodes and emits a control message at once (control is never queued behind data).
    pub(crate) fn send(&mut self, peer: PeerId, msg: &Message) {
        let data = Bytes::from(msg.encode());
        self.transmit(peer, data, 0, false);
    }

    /// Sends one control message to each of `peers`, encoded once (the buffer is shared).
    pub(crate) fn send_each(&mut self, peers: &[PeerId], msg: &Message) {
        if peers.is_empty() {
            return;
        }
        let data = Bytes::from(msg.encode());
        for p in peers {
            self.transmit(*p, data.clone(), 0, false);
        }
    }

    /// Emits one encoded message, accounting it (`payload` bytes of it are piece data; `is_data`
    /// for pieces and headers, which a viewer's upload pacing covers).
    pub(crate) fn transmit(&mut self, peer: PeerId, data: Bytes, payload: usize, is_data: bool) {
        let len = data.len();
        self.stats.wire_bytes_up += len as u64;
        self.stats.bytes_up += payload as u64;
        if let Some(n) = self.neighbours.get_mut(&peer) {
            n.in_flight += len;
            n.bytes_up += payload as u64;
            n.last_sent = self.now;
        }
        if self.is_source() {
            // The source's cap covers everything it sends, control included.
            self.bucket.spend(len);
        } else if is_data {
            self.bucket.spend(len);
        }
        self.outputs.push_back(Output::Transmit { peer, data });
    }

    // ----- periodic maintenance ----------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        let dead: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.last_heard) > DEAD_SILENCE)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            self.drop_neighbour(now, p, DisconnectReason::Silent);
        }
        self.release_silent_children(now);
        let peers: Vec<PeerId> = self.established().collect();
        for p in &peers {
            if self.neighbours.get(p).is_some_and(|n| {
                now >= n.next_ping || now.saturating_duration_since(n.last_sent) >= IDLE_PING
            }) {
                self.ping(now, *p);
            }
        }
        if now >= self.next_pex {
            let first = self.next_pex == Instant::ZERO;
            self.next_pex = now + PEX_INTERVAL;
            if !first {
                for p in &peers {
                    self.send_pex(*p);
                }
            }
        }
        self.connecting
            .retain(|_, at| now.saturating_duration_since(*at) < CONNECT_EXPIRY);
        self.connect_backoff.retain(|_, until| *until > now);
        self.connect_more(now);
        if !self.is_source() {
            self.check_stripes(now);
            self.expire_requests(now);
            self.schedule_pulls(now);
        }
        self.prune_surplus(now);
        if self.status_dirty {
            self.status_dirty = false;
            let status = self.status_message();
            self.send_each(&peers, &status);
        }
    }

    /// Children silent for [`RELEASE_SILENCE`] give up their stripe slots, before they are
    /// dropped: a dead child's slots would otherwise turn subscribers away. A live one that was
    /// only frozen is told with `Unsubscribe` and subscribes again.
    fn release_silent_children(&mut self, now: Instant) {
        let silent: Vec<(PeerId, u64)> = self
            .neighbours
            .iter()
            .filter(|(_, n)| {
                n.child_stripes != 0
                    && now.saturating_duration_since(n.last_heard) > RELEASE_SILENCE
            })
            .map(|(p, n)| (*p, n.child_stripes))
            .collect();
        for (p, stripes) in silent {
            for s in 0..self.k {
                if stripes & (1 << s) != 0 {
                    self.children[s].retain(|c| *c != p);
                    self.send(p, &Message::Unsubscribe { stripe: s as u8 });
                }
            }
            if let Some(n) = self.neighbours.get_mut(&p) {
                n.child_stripes = 0;
                n.queue
                    .retain(|(class, _, _)| *class != super::neighbour::CLASS_PUSH);
            }
            self.status_dirty = true;
        }
    }

    /// Below the target degree: asks the binding to connect to peers learned by exchange.
    fn connect_more(&mut self, now: Instant) {
        let mut want = self.wanted_neighbours();
        if want == 0 || self.pex.is_empty() {
            return;
        }
        let mut cands: Vec<PeerId> = self
            .pex
            .keys()
            .filter(|p| {
                !self.neighbours.contains_key(p)
                    && !self.connecting.contains_key(p)
                    && !self.connect_backoff.contains_key(p)
                    && !self.banned.contains(p)
            })
            .copied()
            .collect();
        while want > 0 && !cands.is_empty() {
            let i = self.rng.below(cands.len() as u64) as usize;
            let p = cands.swap_remove(i);
            self.connecting.insert(p, now);
            self.connect_backoff
                .insert(p, now + Duration::from_secs(60));
            self.outputs.push_back(Output::Connect { peer: p });
            want -= 1;
        }
    }

    /// At the degree limit, makes room for newcomers by dropping a neighbour that neither feeds
    /// nor is fed by us and has given nothing useful lately.
    fn prune_surplus(&mut self, now: Instant) {
        if self.neighbours.len() < self.config.max_degree {
            return;
        }
        let victim = self
            .neighbours
            .iter()
            .filter(|(_, n)| {
                n.established
                    && n.role != Role::Source
                    && n.child_stripes == 0
                    && n.parent_stripes == 0
                    && now.saturating_duration_since(n.connected_at) > Duration::from_secs(10)
                    && now.saturating_duration_since(n.last_useful) > Duration::from_secs(5)
            })
            .min_by_key(|(id, n)| (n.last_useful, **id))
            .map(|(id, _)| *id);
        if let Some(v) = victim {
            self.send(
                v,
                &Message::Goodbye {
                    reason: RejectReason::Full,
                },
            );
            self.drop_neighbour(now, v, DisconnectReason::Useless);
        }
    }
}

/// Segments kept for the bitrate estimate (a few GOPs at usual segment lengths).
const RATE_WINDOW: usize = 24;

/// The stream's bitrate from recent segment sizes, kbit/s, over whole GOPs: from the oldest
/// keyframe segment in the window to just before the newest one. A window cut anywhere else
/// counts keyframe segments (several times the size of the others) unevenly: with 200 ms
/// segments and a keyframe a second, 16 segments held 4 keyframes half of the time, an
/// estimate 4 % high, and the source's cap of 3x that let its busiest second reach 3.13x the
/// stream's bitrate (simulator, 100 viewers). Without two keyframes in the window, all of it.
pub(crate) fn bitrate_kbps(recent: &VecDeque<(u64, u64, bool)>) -> Option<u64> {
    let first = recent.iter().position(|s| s.2);
    let last = recent.iter().rposition(|s| s.2);
    let span = match (first, last) {
        (Some(a), Some(b)) if a < b => a..b,
        _ => 0..recent.len(),
    };
    let (bytes, dur) = recent
        .range(span)
        .fold((0u64, 0u64), |(b, d), (l, u, _)| (b + l, d + u));
    (bytes * 8 * 1000).checked_div(dur)
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    /// A keyframe segment every 5, twice the size: the estimate is the true average whatever
    /// the window's phase (a 16-segment window was 4 % high in one phase of 5).
    #[test]
    fn bitrate_over_whole_gops_is_phase_free() {
        let seg = |i: usize| {
            let k = i % 5 == 0;
            (if k { 20_000u64 } else { 10_000 }, 200_000u64, k)
        };
        // 6 units per 5 segments of 200 ms: 60,000 B/s = 480 kbit/s.
        for start in 0..10 {
            let w: VecDeque<_> = (start..start + RATE_WINDOW).map(seg).collect();
            assert_eq!(bitrate_kbps(&w), Some(480), "phase {start}");
        }
        // Too short for two keyframes: everything counts.
        let w: VecDeque<_> = (1..4).map(seg).collect();
        assert_eq!(bitrate_kbps(&w), Some(400));
        assert_eq!(bitrate_kbps(&VecDeque::new()), None);
    }
}
