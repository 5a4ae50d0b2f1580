//! The core's public vocabulary: its configuration, what the caller tells it ([`Input`]), what
//! it asks the caller to do ([`Output`]) and why it refuses or cuts off. Types only; the
//! machine that consumes and produces them is [`super::Swarm`].

use super::id::PeerId;
use super::segment::InitSegment;
use super::wire::WireError;
use bytes::Bytes;
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

/// What happens to the swarm, told by the caller: transport events and the passage of time.
/// Two variants are application commands kept here for callers written before the commands
/// were methods: [`Input::SendSignal`] is [`super::Swarm::send_signal`] and
/// [`Input::Playhead`] is [`super::Swarm::playhead`] (the same code runs either way).
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
    /// Signalling the binding wants delivered to `to` through a common neighbour (a command:
    /// [`super::Swarm::send_signal`]).
    SendSignal {
        /// Final recipient.
        to: PeerId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// Where playback is (a command: [`super::Swarm::playhead`]): the frame at the player's
    /// playhead was captured at `pts_us` (the segments' pts timeline). Report it while playing
    /// (stalls included), not while paused. Segments the player reaches without having them
    /// are then given up 0.3 s later, and pulled urgently before, even when the schedule fixed
    /// at the first play (first play + pts offset + playout delay) says later: a player that
    /// started late and caught up with the live edge would otherwise stall at every missing
    /// segment until that schedule reached it.
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
    /// Nothing arrived from it for 4 s (the core's dead-silence limit): it vanished without a
    /// goodbye (killed tab, lost network).
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
