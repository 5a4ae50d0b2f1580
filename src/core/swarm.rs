//! The swarm state machine: one per peer (source or viewer) and stream.
//!
//! SKELETON: the public API below is what the browser binding and the simulator program
//! against. The protocol logic behind it is being written (issue 3).

use super::id::{PeerId, StreamId};
use super::identity::StreamKey;
use super::segment::{InitSegment, SegmentMeta};
use super::time::Instant;
pub use super::wire::Role;
use super::wire::WireError;
use std::collections::VecDeque;
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
    /// How many bytes the transport to `peer` still holds unsent (a data channel's
    /// `bufferedAmount`): the core queues no more than the transport drains.
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
        /// One encoded message.
        data: Vec<u8>,
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
}

/// One peer's view of one stream.
pub struct Swarm {
    config: Config,
    stream: StreamId,
    local: PeerId,
    key: Option<StreamKey>,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Swarm {
    /// A viewer of `stream`, known to others as `local`.
    pub fn viewer(config: Config, stream: StreamId, local: PeerId) -> Self {
        Swarm {
            config,
            stream,
            local,
            key: None,
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The source of the stream `key` signs.
    pub fn source(config: Config, key: StreamKey, local: PeerId) -> Self {
        let stream = key.stream_id();
        Swarm {
            config,
            stream,
            local,
            key: Some(key),
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
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

    /// Feeds one event at `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        let _ = (now, input);
    }

    /// The next action, if any. Call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the core next needs [`Input::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Source: publishes (a new version of) the init segment.
    pub fn publish_init(
        &mut self,
        now: Instant,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<u32, PublishError> {
        let _ = (now, mime, data);
        if self.key.is_none() {
            return Err(PublishError::NotSource);
        }
        Ok(1)
    }

    /// Source: publishes the next media segment; returns its sequence number.
    pub fn publish_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        let _ = (now, meta, data);
        if self.key.is_none() {
            return Err(PublishError::NotSource);
        }
        Err(PublishError::NoInit)
    }

    /// How many more neighbours the core would like; the binding asks the tracker for that many.
    pub fn wanted_neighbours(&self) -> usize {
        self.config
            .target_degree
            .saturating_sub(self.stats.neighbours)
    }

    /// This peer's figures.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Figures per current neighbour.
    pub fn neighbour_stats(&self) -> Vec<(PeerId, NeighbourStats)> {
        Vec::new()
    }
}
