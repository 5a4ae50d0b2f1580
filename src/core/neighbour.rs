//! What one peer knows about one neighbour: handshake facts, availability, stripe relations,
//! the outgoing data queue and the transport's backlog.

use super::bitfield::SeqBits;
use super::time::Instant;
use super::wire::Role;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Queue class of a fresh piece pushed to a stripe-child: goes before any requested piece.
pub(crate) const CLASS_PUSH: u8 = 0;
/// Queue class of a piece a neighbour requested: served by deadline (oldest segment first).
pub(crate) const CLASS_REPLY: u8 = 1;

/// Most queued items per neighbour; beyond this, new pushes and requests are dropped (the
/// neighbour pulls them elsewhere), which bounds memory whatever it asks.
pub(crate) const MAX_QUEUE: usize = 1024;

/// A live neighbour is heard several times a second (a `Have` for each segment it completes,
/// a `Ping` on an otherwise idle link, see [`IDLE_PING`]); silent this long, it is treated as
/// gone for requests and parent choice, well before its transport is declared dead.
pub(crate) const SUSPECT_SILENCE: Duration = Duration::from_millis(1_000);
/// Silent this long, a neighbour is dropped: a killed tab or a pulled cable sends no goodbye, and
/// browsers take 5–30 s to call such a connection failed.
pub(crate) const DEAD_SILENCE: Duration = Duration::from_millis(4_000);
/// A child silent this long gives up its stripe slots (a dead one would hold them until dropped).
/// Longer than [`SUSPECT_SILENCE`]: a live child whose tab is starved of CPU for a second must not
/// lose its stripes (it would then avoid its parent for seconds).
pub(crate) const RELEASE_SILENCE: Duration = Duration::from_millis(2_500);
/// A link we have sent nothing on for this long gets a `Ping`, so the other side hears from us.
pub(crate) const IDLE_PING: Duration = Duration::from_millis(500);

/// One outgoing data item: `(class, seq, index)`. Ordered so that pushes come first, then
/// requests, each oldest segment first (deadline order).
pub(crate) type QueueItem = (u8, u64, u16);

/// A neighbour's state.
#[derive(Debug)]
pub(crate) struct Neighbour {
    /// When the transport opened.
    pub connected_at: Instant,
    /// Its handshake arrived and was valid.
    pub established: bool,
    /// What it says it is.
    pub role: Role,
    /// Upload it offers, kbit/s.
    pub upload_kbps: u32,
    /// Its depth on each stripe (from its last `Status`); empty before the first.
    pub depths: Vec<u8>,
    /// Stripe-child slots it says it still has.
    pub free: u16,
    /// Upload from which it would displace a child for us when full.
    pub displace_kbps: u32,
    /// Complete segments it holds (from `Bitfield` and `Have`).
    pub haves: SeqBits,
    /// Segments whose header went out on this connection.
    pub headers_sent: SeqBits,
    /// Newest init version sent to it.
    pub init_sent: u32,
    /// Data waiting for transport room.
    pub queue: BTreeSet<QueueItem>,
    /// Bytes the transport holds: last reported `Buffered` plus what was emitted since.
    pub in_flight: usize,
    /// The binding reports `Buffered` for it; until then its transport is not throttled.
    pub buffered_known: bool,
    /// Bit `s`: it subscribed stripe `s` from us.
    pub child_stripes: u64,
    /// Bit `s`: we receive stripe `s` from it.
    pub parent_stripes: u64,
    /// Our outstanding requests to it: segment → piece bitmask.
    pub requests: BTreeMap<u64, u64>,
    /// Number of pieces in `requests`.
    pub requested_pieces: u32,
    /// Smoothed round-trip time.
    pub srtt: Option<Duration>,
    /// Next ping due.
    pub next_ping: Instant,
    /// Payload bytes sent to it / received from it.
    pub bytes_up: u64,
    /// Payload bytes received from it.
    pub bytes_down: u64,
    /// Last time it gave us a new piece or we sent it one.
    pub last_useful: Instant,
    /// Start of the current one-second flood window and messages seen in it.
    pub flood_window: Instant,
    /// Messages received in the flood window.
    pub flood_msgs: u32,
    /// Relays received in the flood window.
    pub flood_relays: u32,
    /// Pieces it sent that we already had.
    pub duplicates: u64,
    /// Fresh pieces it sent that we had.
    pub useful: u64,
    /// Last time anything arrived from it (liveness: a vanished peer goes silent long before
    /// its transport is declared dead).
    pub last_heard: Instant,
    /// Last time we sent it anything (an idle link gets a ping so that it hears from us).
    pub last_sent: Instant,
    /// We asked it for one header to check whether the source restarted (once per neighbour: a
    /// stale claim costs one small request).
    pub restart_probed: bool,
    /// It offered a header of an older session of the source than ours: it has not noticed a
    /// restart yet. It was shown our newer header; its advertisements and pieces are ignored.
    pub stale_session: bool,
}

impl Neighbour {
    pub(crate) fn new(now: Instant) -> Self {
        Neighbour {
            connected_at: now,
            established: false,
            role: Role::Viewer,
            upload_kbps: 0,
            depths: Vec::new(),
            free: 0,
            displace_kbps: u32::MAX,
            haves: SeqBits::default(),
            headers_sent: SeqBits::default(),
            init_sent: 0,
            queue: BTreeSet::new(),
            in_flight: 0,
            buffered_known: false,
            child_stripes: 0,
            parent_stripes: 0,
            requests: BTreeMap::new(),
            requested_pieces: 0,
            srtt: None,
            next_ping: now,
            bytes_up: 0,
            bytes_down: 0,
            last_useful: now,
            flood_window: now,
            flood_msgs: 0,
            flood_relays: 0,
            duplicates: 0,
            useful: 0,
            last_heard: now,
            last_sent: now,
            restart_probed: false,
            stale_session: false,
        }
    }

    /// Nothing has come from it for [`SUSPECT_SILENCE`]: do not wait on it for anything.
    pub(crate) fn silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) > SUSPECT_SILENCE
    }

    /// The transport has room for more data under `budget`.
    pub(crate) fn has_room(&self, budget: usize) -> bool {
        !self.buffered_known || self.in_flight < budget
    }

    /// Depth on stripe `s` as advertised, [`super::wire::NO_DEPTH`] when unknown.
    pub(crate) fn depth(&self, s: usize) -> u8 {
        self.depths.get(s).copied().unwrap_or(super::wire::NO_DEPTH)
    }

    /// Round-trip estimate with a conservative default before the first sample.
    pub(crate) fn rtt_or_default(&self) -> Duration {
        self.srtt.unwrap_or(Duration::from_millis(200))
    }

    /// Folds in one round-trip sample (EWMA 1/8, as TCP).
    pub(crate) fn rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }
}
