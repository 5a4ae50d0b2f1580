//! The discrete-event engine: every peer runs a real [`Node`] (the product's own node: its
//! [`crate::core::Swarm`], connection table, tracker schedule and rejoin rules); the engine is
//! only its platform, playing network, transport, tracker and player.
//!
//! Time advances in steps of the smallest one-way latency (the lookahead). Within a step each
//! peer's events depend only on that peer's own state, because anything one peer does reaches
//! another at least one latency later; so the peers of a step can be processed in parallel and
//! their cross-peer events merged afterwards. Every event is ordered by (time, origin peer,
//! origin counter), so the run is the same whatever the thread count.

use super::config::SimConfig;
use super::metrics::{PeerMetrics, WireClass};
use super::population::{latency_us, Behaviour, Departure, PeerSpec, TRACKER_POS};
use super::rng::Rng;
use crate::client::binstr;
use crate::client::node::{Action, CloseReason, ConnId, Event, Node, NodeConfig, NodeRole, Via};
use crate::client::tracker::{AnnounceEvent, TrackerMessage, TrackerRequest};
use crate::core::wire::Message;
use crate::core::{Config, Instant, PeerId, SegmentMeta, StreamId, StreamKey};
use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// Transport overhead per packet (IP, UDP, DTLS, SCTP headers) and packet payload size: the
/// uplink serialises these too.
const PACKET_OVERHEAD: usize = 80;
const PACKET_PAYLOAD: usize = 1200;

/// The one tracker every simulated peer is configured with (its URL is never opened).
const TRACKER_URL: &str = "wss://tracker.sim/announce";

/// The published stream: what the source sends and what every player must get, byte for byte.
pub struct Truth {
    /// The init segment's MIME type.
    pub mime: String,
    /// The init segment's bytes.
    pub init: Vec<u8>,
    /// Segment `seq`: metadata, bytes, and when the source publishes it (µs).
    pub segments: Vec<(SegmentMeta, Vec<u8>, u64)>,
}

impl Truth {
    /// Draws the stream: segments of `segment_us` at the bitrate, keyframe segments twice the
    /// size of the others (a keyframe costs more bits), random bytes (incompressible, as
    /// encoded video is).
    pub fn generate(cfg: &SimConfig) -> Truth {
        let mut rng = Rng::derive(cfg.seed, 0x5EED);
        let per_gop = (cfg.keyframe_us / cfg.segment_us).max(1);
        let avg = cfg.bitrate_bps as f64 / 8.0 * cfg.segment_us as f64 / 1e6;
        // One keyframe segment (2 units) plus per_gop - 1 delta segments (1 unit) = avg per_gop.
        let unit = avg * per_gop as f64 / (per_gop as f64 + 1.0);
        let count = cfg.duration_us / cfg.segment_us;
        let segments = (0..count)
            .map(|seq| {
                let keyframe = seq % per_gop == 0;
                let len = ((if keyframe { 2.0 } else { 1.0 }) * unit).max(1.0) as usize;
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                let meta = SegmentMeta {
                    pts_us: seq * cfg.segment_us,
                    duration_us: cfg.segment_us as u32,
                    keyframe,
                };
                (meta, data, (seq + 1) * cfg.segment_us)
            })
            .collect();
        let mut init = vec![0u8; 1200];
        rng.fill(&mut init);
        Truth {
            mime: "video/mp4; codecs=\"avc1.42001f,opus\"".into(),
            init,
            segments,
        }
    }
}

/// What can happen to one peer.
enum Ev {
    Join,
    Leave(Departure),
    /// The node's `poll_timeout` came due.
    Timer,
    /// Source: publish segment `seq`.
    Publish(u64),
    /// The tracker's socket opened.
    TrackerUp,
    /// A message from the modelled tracker.
    Tracker(TrackerMessage),
    /// A message reached this peer's network interface, on its connection `conn`.
    Arrive {
        from: u32,
        conn: ConnId,
        data: Bytes,
    },
    /// A message came through this peer's downlink: hand it to the node.
    Deliver {
        from: u32,
        conn: ConnId,
        data: Bytes,
    },
    /// The uplink finished serialising the message in flight.
    UplinkDone,
    /// The transport of this peer's connection `conn` is up; `remote` is the other end.
    Open {
        conn: ConnId,
        remote: (u32, ConnId),
    },
    /// The other end closed this peer's connection `conn` (or vanished and it was noticed).
    Closed {
        conn: ConnId,
    },
}

struct Sched {
    t: u64,
    src: u32,
    n: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest event first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.src, o.n).cmp(&(self.t, self.src, self.n))
    }
}

impl Sched {
    /// Strictly before `o` in processing order.
    fn before(&self, o: &Sched) -> bool {
        (self.t, self.src, self.n) < (o.t, o.src, o.n)
    }
}

/// A peer's pending events in `(time, origin, counter)` order: a binary heap plus its earliest
/// element held outside it. Most events a handler schedules for its own peer are the very next
/// one (a small message's downlink or uplink completion): those never enter the heap, which
/// saves two sifts through memory that is rarely in cache. Same order as a plain heap.
#[derive(Default)]
struct EventQueue {
    /// Earlier than every element of `heap`, when set.
    front: Option<Sched>,
    heap: BinaryHeap<Sched>,
}

impl EventQueue {
    fn push(&mut self, s: Sched) {
        match &self.front {
            Some(f) if s.before(f) => {
                let old = self.front.replace(s).expect("matched Some");
                self.heap.push(old);
            }
            Some(_) => self.heap.push(s),
            None => {
                if self.heap.peek().is_none_or(|h| s.before(h)) {
                    self.front = Some(s);
                } else {
                    self.heap.push(s);
                }
            }
        }
    }

    fn peek_t(&self) -> Option<u64> {
        match &self.front {
            Some(f) => Some(f.t),
            None => self.heap.peek().map(|s| s.t),
        }
    }

    fn pop(&mut self) -> Option<Sched> {
        self.front.take().or_else(|| self.heap.pop())
    }

    fn clear(&mut self) {
        self.front = None;
        self.heap.clear();
    }
}

/// One transport (data channel) as seen from one end, under the node's connection id.
struct Transport {
    /// The other end, once known (at once for an answer, when the answer comes for an offer).
    remote: Option<(u32, ConnId)>,
    open: bool,
    /// Messages accepted by the transport, not yet on the wire.
    queue: VecDeque<Bytes>,
    /// `bufferedAmount`: bytes queued plus the message being serialised.
    buffered: usize,
}

/// A peer while it is online.
struct Live {
    node: Node,
    transports: BTreeMap<ConnId, Transport>,
    /// Round-robin cursor of the uplink over transports.
    rr: ConnId,
    /// The message being serialised on the uplink: (local conn, remote end, bytes).
    uplink: Option<(ConnId, (u32, ConnId), Bytes)>,
    down_free: u64,
    timer_at: Option<u64>,
    timer_fired_at: Option<u64>,
    /// The modelled tracker's choices for this peer's offers.
    rng: Rng,
}

/// One peer session's mutable state: its event queue, its live state and its measurements.
pub struct PeerState {
    queue: EventQueue,
    counter: u64,
    live: Option<Box<Live>>,
    /// What was measured for this session.
    pub metrics: PeerMetrics,
}

/// A change to the modelled tracker's swarm: `(time, peer, Some(id))` registers (or renames)
/// a peer that announced, `None` removes it.
type TrackerOp = (u64, u32, Option<PeerId>);

/// Events produced in a step for other peers, plus tracker membership changes.
#[derive(Default)]
struct Outbox {
    events: Vec<(u32, Sched)>,
    tracker: Vec<TrackerOp>,
}

/// Read-only state every peer may look at during a step.
struct Ctx<'a> {
    cfg: &'a SimConfig,
    specs: &'a [PeerSpec],
    truth: &'a Truth,
    stream: StreamId,
    /// Peers in the tracker's swarm (snapshot at the start of the step).
    tracker: &'a [u32],
    /// The tracker's peer ids (same snapshot), to route answers.
    tracker_ids: &'a HashMap<PeerId, u32>,
    wire: &'a WireClass,
    end_us: u64,
}

impl Ctx<'_> {
    fn lat(&self, a: u32, b: u32) -> u64 {
        latency_us(
            self.cfg,
            self.specs[a as usize].pos,
            self.specs[b as usize].pos,
        )
    }
    fn lat_tracker(&self, a: u32) -> u64 {
        latency_us(self.cfg, self.specs[a as usize].pos, TRACKER_POS)
    }
}

/// Counters of the engine itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Node events fed.
    pub inputs: u64,
}

/// A run in progress.
pub struct Engine<'a> {
    cfg: &'a SimConfig,
    specs: &'a [PeerSpec],
    truth: &'a Truth,
    key_stream: StreamId,
    key: Option<StreamKey>,
    /// Per-session state, same index as `specs`.
    pub peers: Vec<PeerState>,
    /// Time of each session's earliest queued event (`u64::MAX`: none): the per-step scan reads
    /// this flat array instead of every peer's heap.
    next_t: Vec<u64>,
    tracker: Vec<u32>,
    tracker_pos: Vec<u32>,
    tracker_ids: HashMap<PeerId, u32>,
    /// The id each registered peer announced with.
    tracker_id_of: Vec<Option<PeerId>>,
    wire: WireClass,
    now: u64,
    lookahead: u64,
    /// Engine counters.
    pub stats: EngineStats,
}

impl<'a> Engine<'a> {
    /// Sets up a run: every session's join (and leave) is scheduled, the source publishes from 0.
    pub fn new(cfg: &'a SimConfig, specs: &'a [PeerSpec], truth: &'a Truth) -> Self {
        let mut secret = [0u8; 32];
        Rng::derive(cfg.seed, 0x5EC7).fill(&mut secret);
        let key = StreamKey::from_secret(secret);
        let mut peers: Vec<PeerState> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| PeerState {
                queue: EventQueue::default(),
                counter: 0,
                live: None,
                metrics: PeerMetrics::new(i as u32, s),
            })
            .collect();
        for (i, s) in specs.iter().enumerate() {
            let p = &mut peers[i];
            push(p, i as u32, s.join_us, Ev::Join);
            if let Some((t, how)) = s.leave {
                push(p, i as u32, t, Ev::Leave(how));
            }
        }
        let next_t = peers
            .iter()
            .map(|p| p.queue.peek_t().unwrap_or(u64::MAX))
            .collect();
        Engine {
            cfg,
            specs,
            truth,
            key_stream: key.stream_id(),
            key: Some(key),
            peers,
            next_t,
            tracker: Vec::new(),
            tracker_pos: vec![u32::MAX; specs.len()],
            tracker_ids: HashMap::new(),
            tracker_id_of: vec![None; specs.len()],
            wire: WireClass::new(),
            now: 0,
            lookahead: cfg.latency_min_us.max(1),
            stats: EngineStats::default(),
        }
    }

    /// Simulated time reached, µs.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Peers online now.
    pub fn online(&self) -> usize {
        self.peers.iter().filter(|p| p.live.is_some()).count()
    }

    /// Runs until `until` µs (at most the configured duration).
    pub fn run_until(&mut self, until: u64) {
        let end = self.cfg.duration_us;
        let until = until.min(end);
        let threads = self.cfg.threads.clamp(1, 64);
        while self.now < until {
            let step_end = (self.now + self.lookahead).min(until);
            // The source's key goes into its core at join; hand it over once.
            let ctx = Ctx {
                cfg: self.cfg,
                specs: self.specs,
                truth: self.truth,
                stream: self.key_stream,
                tracker: &self.tracker,
                tracker_ids: &self.tracker_ids,
                wire: &self.wire,
                end_us: end,
            };
            let mut key = self.key.take();
            let (outboxes, stats): (Vec<Outbox>, Vec<EngineStats>) =
                if threads == 1 || self.peers.len() < 64 {
                    let mut ob = Outbox::default();
                    let mut st = EngineStats::default();
                    run_chunk(
                        &ctx,
                        &mut self.peers,
                        &mut self.next_t,
                        0,
                        step_end,
                        &mut key,
                        &mut ob,
                        &mut st,
                    );
                    (vec![ob], vec![st])
                } else {
                    let chunk = self.peers.len().div_ceil(threads);
                    let ctx = &ctx;
                    let mut results: Vec<(Outbox, EngineStats)> = Vec::new();
                    std::thread::scope(|s| {
                        let mut handles = Vec::new();
                        let mut key_slot = key.take();
                        for (ci, (peers, next_t)) in self
                            .peers
                            .chunks_mut(chunk)
                            .zip(self.next_t.chunks_mut(chunk))
                            .enumerate()
                        {
                            // Only the chunk holding the source (index 0) needs the key.
                            let mut k = if ci == 0 { key_slot.take() } else { None };
                            handles.push(s.spawn(move || {
                                let mut ob = Outbox::default();
                                let mut st = EngineStats::default();
                                run_chunk(
                                    ctx,
                                    peers,
                                    next_t,
                                    (ci * chunk) as u32,
                                    step_end,
                                    &mut k,
                                    &mut ob,
                                    &mut st,
                                );
                                (ob, st, k)
                            }));
                        }
                        for h in handles {
                            match h.join() {
                                Ok((ob, st, k)) => {
                                    if k.is_some() {
                                        key = k;
                                    }
                                    results.push((ob, st));
                                }
                                Err(e) => std::panic::resume_unwind(e),
                            }
                        }
                    });
                    results.into_iter().unzip()
                };
            self.key = key;
            let mut tracker_ops = Vec::new();
            for ob in outboxes {
                for (target, s) in ob.events {
                    debug_assert!(s.t >= step_end, "cross-peer event inside the lookahead");
                    let nt = &mut self.next_t[target as usize];
                    *nt = (*nt).min(s.t);
                    self.peers[target as usize].queue.push(s);
                }
                tracker_ops.extend(ob.tracker);
            }
            for st in stats {
                self.stats.events += st.events;
                self.stats.inputs += st.inputs;
            }
            tracker_ops.sort_unstable();
            for (_, idx, id) in tracker_ops {
                self.tracker_op(idx, id);
            }
            self.now = step_end;
        }
    }

    /// Applies one change to the tracker's swarm.
    fn tracker_op(&mut self, idx: u32, id: Option<PeerId>) {
        let i = idx as usize;
        if let Some(old) = self.tracker_id_of[i].take() {
            self.tracker_ids.remove(&old);
        }
        let pos = self.tracker_pos[i];
        match id {
            Some(id) => {
                self.tracker_ids.insert(id, idx);
                self.tracker_id_of[i] = Some(id);
                if pos == u32::MAX {
                    self.tracker_pos[i] = self.tracker.len() as u32;
                    self.tracker.push(idx);
                }
            }
            None if pos != u32::MAX => {
                self.tracker.swap_remove(pos as usize);
                if let Some(&moved) = self.tracker.get(pos as usize) {
                    self.tracker_pos[moved as usize] = pos;
                }
                self.tracker_pos[i] = u32::MAX;
            }
            None => {}
        }
    }

    /// Ends the run: every session still online is closed at the end time and its core's own
    /// statistics are kept.
    pub fn finish(&mut self) {
        let end = self.cfg.duration_us;
        for p in &mut self.peers {
            if let Some(live) = p.live.take() {
                p.metrics.core_stats = Some(live.node.stats().clone());
                p.metrics.left_us = Some(end);
            }
        }
    }
}

fn push(p: &mut PeerState, src: u32, t: u64, ev: Ev) {
    p.counter += 1;
    p.queue.push(Sched {
        t,
        src,
        n: p.counter,
        ev,
    });
}

fn send(ob: &mut Outbox, p: &mut PeerState, me: u32, to: u32, t: u64, ev: Ev) {
    p.counter += 1;
    ob.events.push((
        to,
        Sched {
            t,
            src: me,
            n: p.counter,
            ev,
        },
    ));
}

#[allow(clippy::too_many_arguments)]
fn run_chunk(
    ctx: &Ctx,
    peers: &mut [PeerState],
    next_t: &mut [u64],
    base: u32,
    step_end: u64,
    key: &mut Option<StreamKey>,
    ob: &mut Outbox,
    st: &mut EngineStats,
) {
    let active: Vec<usize> = next_t
        .iter()
        .enumerate()
        .filter(|(_, nt)| **nt < step_end)
        .map(|(i, _)| i)
        .collect();
    for (k, &i) in active.iter().enumerate() {
        // Each peer's state is touched once per step and is rarely still in cache: fetch the
        // next peers' while this one runs (timing only; results do not change).
        if let Some(&j) = active.get(k + 2) {
            prefetch(&peers[j] as *const PeerState as *const u8, 2);
        }
        if let Some(&j) = active.get(k + 1) {
            if let Some(live) = peers[j].live.as_deref() {
                prefetch(
                    live as *const Live as *const u8,
                    std::mem::size_of::<Live>() / 64,
                );
            }
            if let Some(h) = peers[j].queue.heap.peek() {
                prefetch(h as *const Sched as *const u8, 2);
            }
        }
        let p = &mut peers[i];
        let me = base + i as u32;
        while p.queue.peek_t().is_some_and(|t| t < step_end) {
            let Some(s) = p.queue.pop() else { break };
            st.events += 1;
            handle(ctx, p, me, s.t, s.ev, key, ob, st);
        }
        next_t[i] = p.queue.peek_t().unwrap_or(u64::MAX);
    }
}

/// Hints the CPU to load `lines` cache lines from `at` (a no-op where unsupported).
#[inline(always)]
fn prefetch(at: *const u8, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for l in 0..lines {
        // SAFETY: prefetching never faults and reads nothing observable; `wrapping_add` keeps the
        // address computation defined even past the end of the object.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                at.wrapping_add(l * 64) as *const i8,
                core::arch::x86_64::_MM_HINT_T0,
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, lines);
}

/// The modelled platform's SDP: which peer and connection it belongs to, padded to a real
/// SDP's size (it travels through the tracker and through neighbours' relays).
fn sdp(ctx: &Ctx, me: u32, conn: ConnId) -> String {
    let mut s = format!("v=0 sim {me} {}\n", conn.0);
    let n = ctx.cfg.sdp_bytes.max(s.len());
    s.extend(std::iter::repeat_n('a', n - s.len()));
    s
}

fn parse_sdp(sdp: &str) -> Option<(u32, ConnId)> {
    let mut it = sdp.lines().next()?.strip_prefix("v=0 sim ")?.split(' ');
    let peer = it.next()?.parse().ok()?;
    let conn = it.next()?.parse().ok()?;
    Some((peer, ConnId(conn)))
}

/// The node configuration of peer `me`.
fn node_config(ctx: &Ctx, me: u32, key: &mut Option<StreamKey>) -> Option<NodeConfig> {
    let spec = &ctx.specs[me as usize];
    let mut config = Config {
        upload_kbps: match spec.behaviour {
            Behaviour::FreeRider => 0,
            _ => ctx
                .cfg
                .advertise_kbps
                .unwrap_or((spec.up_bps as f64 / 1000.0 * ctx.cfg.advertise_share) as u32),
        },
        source_cap_multiple: ctx.cfg.source_cap,
        window: std::time::Duration::from_micros(ctx.cfg.window_us),
        playout_delay: std::time::Duration::from_micros(ctx.cfg.buffer_us),
        seed: ctx.cfg.seed ^ (me as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ..Config::default()
    };
    if let Some(d) = ctx.cfg.target_degree {
        config.target_degree = d;
    }
    if let Some(d) = ctx.cfg.max_degree {
        config.max_degree = d;
    }
    let role = if spec.behaviour == Behaviour::Source {
        NodeRole::Source { key: key.take()? }
    } else {
        NodeRole::Viewer { stream: ctx.stream }
    };
    Some(NodeConfig::new(
        role,
        vec![TRACKER_URL.to_owned()],
        spec.id,
        config,
    ))
}

#[allow(clippy::too_many_arguments)]
fn handle(
    ctx: &Ctx,
    p: &mut PeerState,
    me: u32,
    now: u64,
    ev: Ev,
    key: &mut Option<StreamKey>,
    ob: &mut Outbox,
    st: &mut EngineStats,
) {
    let spec = &ctx.specs[me as usize];
    let at = Instant::from_micros(now);
    match ev {
        Ev::Join => {
            if p.live.is_some() {
                return;
            }
            let Some(config) = node_config(ctx, me, key) else {
                return;
            };
            let seed = ctx.cfg.seed ^ 0x4E0D_E000 ^ (me as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let node = Node::new(config, seed);
            p.live = Some(Box::new(Live {
                node,
                transports: BTreeMap::new(),
                rr: ConnId(0),
                uplink: None,
                down_free: 0,
                timer_at: None,
                timer_fired_at: None,
                rng: Rng::derive(ctx.cfg.seed ^ 0xA11CE, me as u64),
            }));
            p.metrics.joined_us = Some(now);
            if spec.behaviour == Behaviour::Source {
                if let Some(live) = p.live.as_mut() {
                    if let Err(e) =
                        live.node
                            .publish_init(at, &ctx.truth.mime, ctx.truth.init.clone())
                    {
                        p.metrics.note(format!("publish_init failed: {e}"));
                    }
                }
                if let Some((_, _, t)) = ctx.truth.segments.first() {
                    push(p, me, *t, Ev::Publish(0));
                }
            }
            feed(ctx, p, me, now, Event::Timeout, ob, st);
        }
        Ev::Leave(how) => {
            if how == Departure::Graceful {
                // A page that closes cleanly says `stopped` and goodbye first.
                if let Some(live) = p.live.as_mut() {
                    live.node.close(at);
                    st.inputs += 1;
                }
                drain(ctx, p, me, now, ob, st);
            }
            let Some(live) = p.live.take() else { return };
            p.metrics.left_us = Some(now);
            p.metrics.core_stats = Some(live.node.stats().clone());
            ob.tracker.push((now, me, None));
            // Transports still up (an abrupt departure) are noticed by the other ends late.
            let mut pc = p.counter;
            for t in live.transports.values() {
                let Some((peer, conn)) = t.remote else {
                    continue;
                };
                let delay = match how {
                    Departure::Graceful => ctx.lat(me, peer),
                    Departure::Abrupt => ctx.cfg.detect_us,
                };
                pc += 1;
                ob.events.push((
                    peer,
                    Sched {
                        t: now + delay.max(ctx.cfg.latency_min_us),
                        src: me,
                        n: pc,
                        ev: Ev::Closed { conn },
                    },
                ));
            }
            p.counter = pc;
            p.queue.clear();
        }
        Ev::Timer => {
            let Some(live) = p.live.as_mut() else { return };
            if live.timer_at != Some(now) {
                return; // superseded
            }
            live.timer_at = None;
            live.timer_fired_at = Some(now);
            feed(ctx, p, me, now, Event::Timeout, ob, st);
        }
        Ev::Publish(seq) => {
            let Some(live) = p.live.as_mut() else { return };
            if let Some((meta, data, _)) = ctx.truth.segments.get(seq as usize) {
                match live.node.publish_segment(at, *meta, data.clone()) {
                    Ok(_) => p.metrics.published += 1,
                    Err(e) => p.metrics.note(format!("publish_segment {seq} failed: {e}")),
                }
                drain(ctx, p, me, now, ob, st);
                if let Some((_, _, t)) = ctx.truth.segments.get(seq as usize + 1) {
                    if *t < ctx.end_us {
                        push(p, me, *t, Ev::Publish(seq + 1));
                    }
                }
            }
        }
        Ev::TrackerUp => feed(ctx, p, me, now, Event::TrackerOpen { tracker: 0 }, ob, st),
        Ev::Tracker(message) => {
            let ev = Event::TrackerMessage {
                tracker: 0,
                message,
            };
            feed(ctx, p, me, now, ev, ob, st);
        }
        Ev::Arrive { from, conn, data } => {
            let Some(live) = p.live.as_mut() else { return };
            let t = live.down_free.max(now) + ser_us(data.len(), spec.down_bps);
            live.down_free = t;
            push(p, me, t, Ev::Deliver { from, conn, data });
        }
        Ev::Deliver { from, conn, data } => {
            let Some(live) = p.live.as_mut() else { return };
            if !live.transports.get(&conn).is_some_and(|t| t.open) {
                p.metrics.dropped_closed += 1;
                return;
            }
            p.metrics.wire_down += data.len() as u64;
            if let Some(n) = ctx.wire.piece_payload(&data) {
                p.metrics.payload_down += n as u64;
                if ctx.specs[from as usize].behaviour == Behaviour::Source {
                    p.metrics.payload_from_source += n as u64;
                }
            }
            // The shared buffer: every peer keeps a reference to the one copy of a piece's
            // bytes (as a browser keeps the one it received), and still verifies it itself.
            feed(
                ctx,
                p,
                me,
                now,
                Event::ChannelMessage { conn, data },
                ob,
                st,
            );
        }
        Ev::UplinkDone => {
            let Some(live) = p.live.as_mut() else { return };
            let Some((conn, (to, rc), data)) = live.uplink.take() else {
                return;
            };
            let mut report = None;
            if let Some(t) = live.transports.get_mut(&conn) {
                t.buffered = t.buffered.saturating_sub(data.len());
                if t.open {
                    report = Some(t.buffered);
                }
            }
            let t = now + ctx.lat(me, to);
            send(
                ob,
                p,
                me,
                to,
                t,
                Ev::Arrive {
                    from: me,
                    conn: rc,
                    data,
                },
            );
            start_uplink(p, me, now, spec.up_bps);
            match report {
                Some(bytes) => feed(
                    ctx,
                    p,
                    me,
                    now,
                    Event::ChannelBuffered { conn, bytes },
                    ob,
                    st,
                ),
                None => drain(ctx, p, me, now, ob, st),
            }
        }
        Ev::Open { conn, remote } => {
            let Some(live) = p.live.as_mut() else { return };
            match live.transports.get_mut(&conn) {
                Some(t) if !t.open && t.remote == Some(remote) => {
                    t.open = true;
                    p.metrics.connections += 1;
                    feed(ctx, p, me, now, Event::ChannelOpen { conn }, ob, st);
                }
                Some(_) => {}
                None => {
                    // We gave up on this connection meanwhile: close the other end.
                    let t = now + ctx.lat(me, remote.0);
                    send(ob, p, me, remote.0, t, Ev::Closed { conn: remote.1 });
                }
            }
        }
        Ev::Closed { conn } => {
            let Some(live) = p.live.as_mut() else { return };
            if live.transports.remove(&conn).is_some() {
                feed(ctx, p, me, now, Event::ChannelClosed { conn }, ob, st);
            }
        }
    }
}

/// Feeds one event to the node and carries out what it wants.
fn feed(
    ctx: &Ctx,
    p: &mut PeerState,
    me: u32,
    now: u64,
    ev: Event,
    ob: &mut Outbox,
    st: &mut EngineStats,
) {
    let Some(live) = p.live.as_mut() else { return };
    live.node.handle(Instant::from_micros(now), ev);
    st.inputs += 1;
    drain(ctx, p, me, now, ob, st);
}

/// Serialisation time of `len` message bytes at `bps`, with transport overhead.
fn ser_us(len: usize, bps: u64) -> u64 {
    let packets = len.div_ceil(PACKET_PAYLOAD).max(1);
    let bits = ((len + packets * PACKET_OVERHEAD) * 8) as u64;
    (bits * 1_000_000).div_ceil(bps.max(1))
}

/// Starts serialising the next queued message, round-robin over transports (one uplink shared
/// by every data channel, as SCTP associations over one access link are).
fn start_uplink(p: &mut PeerState, me: u32, now: u64, up_bps: u64) {
    let Some(live) = p.live.as_mut() else { return };
    if live.uplink.is_some() || live.transports.is_empty() {
        return;
    }
    let rr = live.rr;
    let next = live
        .transports
        .range(ConnId(rr.0.saturating_add(1))..)
        .chain(live.transports.range(..=rr))
        .find(|(_, t)| !t.queue.is_empty())
        .map(|(id, _)| *id);
    let Some(conn) = next else { return };
    let Some(t) = live.transports.get_mut(&conn) else {
        return;
    };
    let (Some(msg), Some(remote)) = (t.queue.pop_front(), t.remote) else {
        return;
    };
    live.rr = conn;
    let at = now + ser_us(msg.len(), up_bps);
    live.uplink = Some((conn, remote, msg));
    push(p, me, at, Ev::UplinkDone);
}

/// The modelled tracker (WebTorrent style), run at the announcing peer: each offer goes to a
/// random other peer of the swarm, answers go back to the offerer by peer id.
fn tracker(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, req: TrackerRequest, ob: &mut Outbox) {
    let up = ctx.lat_tracker(me);
    match req {
        TrackerRequest::Announce(a) => {
            if a.event == AnnounceEvent::Stopped {
                ob.tracker.push((now, me, None));
                return;
            }
            ob.tracker.push((now, me, Some(a.peer_id)));
            if !a.offers.is_empty() {
                p.metrics.offers += a.offers.len() as u64;
            }
            let Some(live) = p.live.as_mut() else { return };
            let others = ctx.tracker.iter().filter(|&&q| q != me).count();
            let mut chosen: Vec<u32> = Vec::with_capacity(a.offers.len());
            for _ in 0..a.offers.len() * 3 {
                if chosen.len() >= a.offers.len().min(others) {
                    break;
                }
                let q = ctx.tracker[live.rng.below(ctx.tracker.len() as u64) as usize];
                if q != me && !chosen.contains(&q) {
                    chosen.push(q);
                }
            }
            for (q, o) in chosen.into_iter().zip(a.offers) {
                let message = TrackerMessage::Offer {
                    peer: a.peer_id,
                    offer_id: binstr::encode(&o.offer_id),
                    sdp: o.sdp,
                };
                let t = now + up + ctx.lat_tracker(q);
                send(ob, p, me, q, t, Ev::Tracker(message));
            }
            let message = TrackerMessage::Response {
                interval: Some((ctx.cfg.announce_interval_us / 1_000_000).max(1) as u32),
                complete: Some(1),
                incomplete: Some(ctx.tracker.len().saturating_sub(1) as u64),
                warning: None,
            };
            push(p, me, now + 2 * up, Ev::Tracker(message));
        }
        TrackerRequest::Answer {
            peer_id,
            to,
            offer_id,
            sdp,
            ..
        } => {
            if let Some(&q) = ctx.tracker_ids.get(&to) {
                let message = TrackerMessage::Answer {
                    peer: peer_id,
                    offer_id,
                    sdp,
                };
                let t = now + up + ctx.lat_tracker(q);
                send(ob, p, me, q, t, Ev::Tracker(message));
            }
        }
    }
}

/// Hands a message from the node to the transport (after a malicious peer had its way with it).
fn transmit(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, conn: ConnId, data: Bytes) {
    let spec = &ctx.specs[me as usize];
    let data = match spec.behaviour {
        Behaviour::Forger | Behaviour::Withholder => match tamper(ctx, p, spec.behaviour, data) {
            Some(d) => d,
            None => return,
        },
        _ => data,
    };
    let Some(live) = p.live.as_mut() else { return };
    let Some(t) = live.transports.get_mut(&conn).filter(|t| t.open) else {
        p.metrics.sent_unconnected += 1;
        return;
    };
    let len = data.len();
    let payload = ctx.wire.piece_payload(&data);
    t.buffered += len;
    t.queue.push_back(data);
    p.metrics.wire_up += len as u64;
    if spec.behaviour == Behaviour::Source {
        let sec = (now / 1_000_000) as usize;
        if p.metrics.up_per_sec.len() <= sec {
            p.metrics.up_per_sec.resize(sec + 1, 0);
        }
        p.metrics.up_per_sec[sec] += len as u64;
    }
    if let Some(n) = payload {
        p.metrics.payload_up += n as u64;
    }
    start_uplink(p, me, now, spec.up_bps);
}

/// What a malicious peer sends instead of `data`: forgers corrupt piece bytes and headers,
/// withholders drop piece data. `None`: nothing is sent.
fn tamper(ctx: &Ctx, p: &mut PeerState, b: Behaviour, data: Bytes) -> Option<Bytes> {
    let piece = ctx.wire.piece_payload(&data).is_some();
    if b == Behaviour::Withholder {
        if piece {
            p.metrics.tampered += 1;
            return None;
        }
        return Some(data);
    }
    if !piece && !ctx.wire.is_header(&data) {
        return Some(data);
    }
    let Ok(mut msg) = Message::decode(&data) else {
        return Some(data);
    };
    match &mut msg {
        Message::Piece { data, .. } => {
            if let Some(b) = data.first_mut() {
                *b ^= 0xA5;
            }
        }
        // Every other header is tampered with (a different timestamp: the signature no longer
        // verifies); the rest pass so the forged pieces that follow get a hearing.
        Message::Header(h) if h.header.seq % 2 == 0 => h.header.pts_us ^= 1,
        _ => {}
    }
    p.metrics.tampered += 1;
    Some(Bytes::from(msg.encode()))
}

/// Carries out everything the node wants done, then re-arms its timer.
fn drain(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, ob: &mut Outbox, st: &mut EngineStats) {
    let at = Instant::from_micros(now);
    loop {
        let Some(live) = p.live.as_mut() else { return };
        let Some(action) = live.node.poll_action() else {
            break;
        };
        match action {
            Action::TrackerConnect { .. } => {
                push(p, me, now + 2 * ctx.lat_tracker(me), Ev::TrackerUp);
            }
            Action::TrackerSend { request, .. } => tracker(ctx, p, me, now, request, ob),
            // The modelled tracker forgets a peer when it says `stopped` or leaves.
            Action::TrackerClose { .. } => {}
            Action::CreateOffer { conn } => {
                if matches!(
                    live.node.conns().get(conn).map(|c| &c.via),
                    Some(Via::Relay)
                ) {
                    p.metrics.pex_offers += 1;
                }
                live.transports.insert(
                    conn,
                    Transport {
                        remote: None,
                        open: false,
                        queue: VecDeque::new(),
                        buffered: 0,
                    },
                );
                let sdp = sdp(ctx, me, conn);
                live.node.handle(at, Event::OfferCreated { conn, sdp });
                st.inputs += 1;
            }
            Action::AcceptOffer { conn, sdp: offer } => {
                let Some(remote) = parse_sdp(&offer) else {
                    live.node.handle(at, Event::ConnectFailed { conn });
                    st.inputs += 1;
                    continue;
                };
                live.transports.insert(
                    conn,
                    Transport {
                        remote: Some(remote),
                        open: false,
                        queue: VecDeque::new(),
                        buffered: 0,
                    },
                );
                let sdp = sdp(ctx, me, conn);
                live.node.handle(at, Event::AnswerCreated { conn, sdp });
                st.inputs += 1;
            }
            Action::ApplyAnswer { conn, sdp: answer } => {
                let remote = parse_sdp(&answer);
                let Some((t, remote)) = live.transports.get_mut(&conn).zip(remote) else {
                    live.node.handle(at, Event::ConnectFailed { conn });
                    st.inputs += 1;
                    continue;
                };
                t.remote = Some(remote);
                // ICE, DTLS and SCTP take a few round trips, then both ends see the channel
                // open (the answerer slightly earlier, so that nothing it sends can arrive
                // before the offerer knows the channel).
                let lat = ctx.lat(me, remote.0);
                let setup = ctx.cfg.setup_fixed_us + (ctx.cfg.setup_rtts * 2.0 * lat as f64) as u64;
                let setup = setup.max(2 * lat);
                push(p, me, now + setup, Ev::Open { conn, remote });
                send(
                    ob,
                    p,
                    me,
                    remote.0,
                    now + setup - lat / 2,
                    Ev::Open {
                        conn: remote.1,
                        remote: (me, conn),
                    },
                );
            }
            Action::Send { conn, data } => transmit(ctx, p, me, now, conn, data),
            Action::Close { conn, reason } => {
                let t = live.transports.remove(&conn);
                let remote = t.and_then(|t| t.remote);
                match &reason {
                    CloseReason::Core(r) => {
                        let them = remote
                            .map_or(Behaviour::Honest, |(q, _)| ctx.specs[q as usize].behaviour);
                        p.metrics.on_disconnect(r, them);
                    }
                    CloseReason::Stale => p.metrics.setup_expired += 1,
                    _ => {}
                }
                if let Some((q, rc)) = remote {
                    let t = now + ctx.lat(me, q);
                    send(ob, p, me, q, t, Ev::Closed { conn: rc });
                }
            }
            Action::Init(init) => {
                let ok = init.data == ctx.truth.init && init.mime == ctx.truth.mime;
                p.metrics.on_init(now, ok);
            }
            Action::Play(seg) => {
                let truth = ctx.truth.segments.get(seg.seq as usize);
                let genuine = truth.is_some_and(|(m, d, _)| {
                    *d == seg.data && m.pts_us == seg.pts_us && m.keyframe == seg.keyframe
                });
                let (pts, published) = truth.map(|(m, _, t)| (m.pts_us, *t)).unwrap_or((0, 0));
                p.metrics
                    .on_play(ctx.cfg, now, seg.seq, pts, published, genuine);
            }
            Action::Skip { seq } => p.metrics.on_skip(seq),
            Action::Rejoined { reason, .. } => {
                p.metrics.rejoins += 1;
                p.metrics.note(format!("rejoined at {now} µs: {reason:?}"));
            }
        }
    }
    let Some(live) = p.live.as_mut() else { return };
    let want = live.node.poll_timeout().map(|t| t.as_micros());
    if let Some(t) = want {
        // A node asking to be woken in the past is woken next millisecond (and counted), so a
        // buggy timer cannot spin the simulation.
        let t = if t > now {
            t
        } else if live.timer_fired_at == Some(now) {
            p.metrics.past_timers += 1;
            now + 1_000
        } else {
            now
        };
        if live.timer_at != Some(t) {
            live.timer_at = Some(t);
            push(p, me, t, Ev::Timer);
        }
    }
}
