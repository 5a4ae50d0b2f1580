//! The discrete-event engine: every peer runs a real [`Swarm`]; the engine is its "binding",
//! playing network, transport, tracker and player.
//!
//! Time advances in steps of the smallest one-way latency (the lookahead). Within a step each
//! peer's events depend only on that peer's own state, because anything one peer does reaches
//! another at least one latency later; so the peers of a step can be processed in parallel and
//! their cross-peer events merged afterwards. Every event is ordered by (time, origin peer,
//! origin counter), so the run is the same whatever the thread count.

use super::config::SimConfig;
use super::metrics::{PeerMetrics, WireClass};
use super::population::{latency_us, peer_index, Behaviour, Departure, PeerSpec, TRACKER_POS};
use super::rng::Rng;
use crate::core::wire::Message;
use crate::core::{Config, Input, Instant, Output, SegmentMeta, StreamId, StreamKey, Swarm};
use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Pending (offered, not yet open) connections are dropped after this long. A full peer ignores
/// an offer (as a WebTorrent client does), so the offerer learns it only by this timeout; an
/// answer and the set-up normally take well under a second.
const PENDING_TIMEOUT_US: u64 = 3_000_000;
/// How often a peer's binding checks whether the core wants more neighbours.
const ANNOUNCE_CHECK_US: u64 = 1_000_000;
/// Most offers in one tracker announce (WebTorrent clients send up to 10).
const MAX_OFFERS: usize = 10;
/// Transport overhead per packet (IP, UDP, DTLS, SCTP headers) and packet payload size: the
/// uplink serialises these too.
const PACKET_OVERHEAD: usize = 80;
const PACKET_PAYLOAD: usize = 1200;

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
    /// The core's `poll_timeout` came due.
    Timer,
    /// Check whether to ask the tracker for more neighbours.
    Announce,
    /// Source: publish segment `seq`.
    Publish(u64),
    /// A message reached this peer's network interface.
    Arrive {
        from: u32,
        conn: u64,
        data: Bytes,
    },
    /// A message came through this peer's downlink: hand it to the core.
    Deliver {
        from: u32,
        conn: u64,
        data: Bytes,
    },
    /// The uplink finished serialising the message in flight.
    UplinkDone,
    /// An offer relayed by the tracker.
    Offer {
        from: u32,
        conn: u64,
    },
    /// An answer relayed by the tracker.
    Answer {
        from: u32,
        conn: u64,
    },
    /// The transport to `peer` is up.
    Open {
        peer: u32,
        conn: u64,
    },
    /// `peer` closed the transport (or vanished and it was noticed).
    Closed {
        peer: u32,
        conn: u64,
    },
    /// A pending connection timed out.
    Expire {
        peer: u32,
        conn: u64,
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

/// One transport (data channel) as seen from one end.
struct Conn {
    peer: u32,
    id: u64,
    open: bool,
    initiator: bool,
    /// Messages accepted by the transport, not yet on the wire.
    queue: VecDeque<Bytes>,
    /// `bufferedAmount`: bytes queued plus the message being serialised.
    buffered: usize,
}

/// A peer while it is online.
struct Live {
    swarm: Swarm,
    conns: Vec<Conn>,
    rr: usize,
    /// The message being serialised on the uplink: (to, conn, bytes).
    uplink: Option<(u32, u64, Bytes)>,
    down_free: u64,
    timer_at: Option<u64>,
    timer_fired_at: Option<u64>,
    last_announce: Option<u64>,
    conn_counter: u64,
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

/// Events produced in a step for other peers, plus tracker membership changes.
#[derive(Default)]
struct Outbox {
    events: Vec<(u32, Sched)>,
    tracker: Vec<(u64, u32, bool)>,
}

/// Read-only state every peer may look at during a step.
struct Ctx<'a> {
    cfg: &'a SimConfig,
    specs: &'a [PeerSpec],
    truth: &'a Truth,
    stream: StreamId,
    /// Online peers as the tracker knows them (snapshot at the start of the step).
    tracker: &'a [u32],
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
    /// Core inputs fed.
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
        self.tracker.len()
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
            for (_, idx, join) in tracker_ops {
                let pos = self.tracker_pos[idx as usize];
                if join && pos == u32::MAX {
                    self.tracker_pos[idx as usize] = self.tracker.len() as u32;
                    self.tracker.push(idx);
                } else if !join && pos != u32::MAX {
                    self.tracker.swap_remove(pos as usize);
                    if let Some(&moved) = self.tracker.get(pos as usize) {
                        self.tracker_pos[moved as usize] = pos;
                    }
                    self.tracker_pos[idx as usize] = u32::MAX;
                }
            }
            self.now = step_end;
        }
    }

    /// Ends the run: every session still online is closed at the end time and its core's own
    /// statistics are kept.
    pub fn finish(&mut self) {
        let end = self.cfg.duration_us;
        for p in &mut self.peers {
            if let Some(live) = p.live.take() {
                p.metrics.core_stats = Some(live.swarm.stats().clone());
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

/// The offer/answer payload the modelled binding exchanges (through the tracker, or relayed by
/// neighbours through the core): kind, connection id, padded to a real SDP's size.
fn signal_payload(ctx: &Ctx, answer: bool, conn: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(ctx.cfg.sdp_bytes.max(16));
    v.extend_from_slice(b"SDP");
    v.push(answer as u8);
    v.extend_from_slice(&conn.to_le_bytes());
    v.resize(ctx.cfg.sdp_bytes.max(12), b'a');
    v
}

fn parse_signal(payload: &[u8]) -> Option<(bool, u64)> {
    if payload.len() < 12 || &payload[..3] != b"SDP" || payload[3] > 1 {
        return None;
    }
    let conn = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    Some((payload[3] == 1, conn))
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
    match ev {
        Ev::Join => {
            if p.live.is_some() {
                return;
            }
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
            let swarm = if spec.behaviour == Behaviour::Source {
                match key.take() {
                    Some(k) => Swarm::source(config, k, spec.id),
                    None => return,
                }
            } else {
                Swarm::viewer(config, ctx.stream, spec.id)
            };
            p.live = Some(Box::new(Live {
                swarm,
                conns: Vec::new(),
                rr: 0,
                uplink: None,
                down_free: 0,
                timer_at: None,
                timer_fired_at: None,
                last_announce: None,
                conn_counter: 0,
                rng: Rng::derive(ctx.cfg.seed ^ 0xA11CE, me as u64),
            }));
            p.metrics.joined_us = Some(now);
            ob.tracker.push((now, me, true));
            if spec.behaviour == Behaviour::Source {
                let live = p.live.as_mut().map(|l| &mut l.swarm);
                if let Some(sw) = live {
                    if let Err(e) = sw.publish_init(
                        Instant::from_micros(now),
                        &ctx.truth.mime,
                        ctx.truth.init.clone(),
                    ) {
                        p.metrics.note(format!("publish_init failed: {e}"));
                    }
                }
                if let Some((_, _, at)) = ctx.truth.segments.first() {
                    push(p, me, *at, Ev::Publish(0));
                }
                drain(ctx, p, me, now, ob, st);
            }
            announce(ctx, p, me, now, ob);
            push(p, me, now + ANNOUNCE_CHECK_US, Ev::Announce);
        }
        Ev::Leave(how) => {
            if how == Departure::Graceful {
                // A page that closes cleanly lets the core say goodbye first.
                if let Some(live) = p.live.as_mut() {
                    live.swarm.close(Instant::from_micros(now));
                    st.inputs += 1;
                }
                drain(ctx, p, me, now, ob, st);
            }
            let Some(live) = p.live.take() else { return };
            p.metrics.left_us = Some(now);
            p.metrics.core_stats = Some(live.swarm.stats().clone());
            ob.tracker.push((now, me, false));
            let mut pc = p.counter;
            for c in &live.conns {
                let delay = match how {
                    Departure::Graceful => ctx.lat(me, c.peer),
                    Departure::Abrupt => ctx.cfg.detect_us,
                };
                pc += 1;
                ob.events.push((
                    c.peer,
                    Sched {
                        t: now + delay.max(ctx.cfg.latency_min_us),
                        src: me,
                        n: pc,
                        ev: Ev::Closed {
                            peer: me,
                            conn: c.id,
                        },
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
            live.swarm
                .handle_input(Instant::from_micros(now), Input::Timeout);
            st.inputs += 1;
            drain(ctx, p, me, now, ob, st);
        }
        Ev::Announce => {
            if p.live.is_none() {
                return;
            }
            announce(ctx, p, me, now, ob);
            push(p, me, now + ANNOUNCE_CHECK_US, Ev::Announce);
        }
        Ev::Publish(seq) => {
            let Some(live) = p.live.as_mut() else { return };
            if let Some((meta, data, _)) = ctx.truth.segments.get(seq as usize) {
                match live
                    .swarm
                    .publish_segment(Instant::from_micros(now), *meta, data.clone())
                {
                    Ok(_) => p.metrics.published += 1,
                    Err(e) => p.metrics.note(format!("publish_segment {seq} failed: {e}")),
                }
                drain(ctx, p, me, now, ob, st);
                if let Some((_, _, at)) = ctx.truth.segments.get(seq as usize + 1) {
                    if *at < ctx.end_us {
                        push(p, me, *at, Ev::Publish(seq + 1));
                    }
                }
            }
        }
        Ev::Arrive { from, conn, data } => {
            let Some(live) = p.live.as_mut() else { return };
            let t = live.down_free.max(now) + ser_us(data.len(), spec.down_bps);
            live.down_free = t;
            push(p, me, t, Ev::Deliver { from, conn, data });
        }
        Ev::Deliver { from, conn, data } => {
            let Some(live) = p.live.as_mut() else { return };
            if !live.conns.iter().any(|c| c.id == conn && c.open) {
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
            live.swarm.handle_input(
                Instant::from_micros(now),
                Input::ReceiveShared {
                    peer: ctx.specs[from as usize].id,
                    data,
                },
            );
            st.inputs += 1;
            drain(ctx, p, me, now, ob, st);
        }
        Ev::UplinkDone => {
            let Some(live) = p.live.as_mut() else { return };
            let Some((to, conn, data)) = live.uplink.take() else {
                return;
            };
            let len = data.len();
            let lat = ctx.lat(me, to);
            let mut report = None;
            if let Some(c) = live.conns.iter_mut().find(|c| c.id == conn) {
                c.buffered = c.buffered.saturating_sub(len);
                if c.open {
                    report = Some((c.peer, c.buffered));
                }
            }
            send(
                ob,
                p,
                me,
                to,
                now + lat,
                Ev::Arrive {
                    from: me,
                    conn,
                    data,
                },
            );
            let live = p.live.as_mut().expect("checked above");
            if let Some((peer, bytes)) = report {
                live.swarm.handle_input(
                    Instant::from_micros(now),
                    Input::Buffered {
                        peer: ctx.specs[peer as usize].id,
                        bytes,
                    },
                );
                st.inputs += 1;
            }
            start_uplink(p, me, now, spec.up_bps);
            drain(ctx, p, me, now, ob, st);
        }
        Ev::Offer { from, conn } => {
            if accept_offer(ctx, p, me, now, from, conn) {
                let t = now + ctx.lat_tracker(me) + ctx.lat_tracker(from);
                send(ob, p, me, from, t, Ev::Answer { from: me, conn });
            }
        }
        Ev::Answer { from, conn } => on_answer(ctx, p, me, now, from, conn, ob),
        Ev::Open { peer, conn } => {
            let Some(live) = p.live.as_mut() else { return };
            match live
                .conns
                .iter_mut()
                .find(|c| c.id == conn && c.peer == peer)
            {
                Some(c) if !c.open => {
                    c.open = true;
                    p.metrics.connections += 1;
                    live.swarm.handle_input(
                        Instant::from_micros(now),
                        Input::Connected {
                            peer: ctx.specs[peer as usize].id,
                        },
                    );
                    st.inputs += 1;
                    drain(ctx, p, me, now, ob, st);
                }
                Some(_) => {}
                None => {
                    // We gave up on this connection meanwhile: close the other end.
                    let t = now + ctx.lat(me, peer);
                    send(ob, p, me, peer, t, Ev::Closed { peer: me, conn });
                }
            }
        }
        Ev::Closed { peer, conn } => {
            let Some(live) = p.live.as_mut() else { return };
            if let Some(i) = live
                .conns
                .iter()
                .position(|c| c.id == conn && c.peer == peer)
            {
                let c = live.conns.swap_remove(i);
                if c.open {
                    live.swarm.handle_input(
                        Instant::from_micros(now),
                        Input::Disconnected {
                            peer: ctx.specs[peer as usize].id,
                        },
                    );
                    st.inputs += 1;
                    drain(ctx, p, me, now, ob, st);
                }
            }
        }
        Ev::Expire { peer, conn } => {
            let Some(live) = p.live.as_mut() else { return };
            if let Some(i) = live
                .conns
                .iter()
                .position(|c| c.id == conn && c.peer == peer && !c.open)
            {
                live.conns.swap_remove(i);
                p.metrics.setup_expired += 1;
            }
        }
    }
}

/// Serialisation time of `len` message bytes at `bps`, with transport overhead.
fn ser_us(len: usize, bps: u64) -> u64 {
    let packets = len.div_ceil(PACKET_PAYLOAD).max(1);
    let bits = ((len + packets * PACKET_OVERHEAD) * 8) as u64;
    (bits * 1_000_000).div_ceil(bps.max(1))
}

/// Starts serialising the next queued message, round-robin over connections (one uplink shared
/// by every data channel, as SCTP associations over one access link are).
fn start_uplink(p: &mut PeerState, me: u32, now: u64, up_bps: u64) {
    let Some(live) = p.live.as_mut() else { return };
    if live.uplink.is_some() || live.conns.is_empty() {
        return;
    }
    let n = live.conns.len();
    for k in 0..n {
        let i = (live.rr + 1 + k) % n;
        if let Some(msg) = live.conns[i].queue.pop_front() {
            live.rr = i;
            let t = now + ser_us(msg.len(), up_bps);
            live.uplink = Some((live.conns[i].peer, live.conns[i].id, msg));
            push(p, me, t, Ev::UplinkDone);
            return;
        }
    }
}

/// Asks the tracker for as many neighbours as the core wants (WebTorrent style: offers go to
/// random peers of the swarm through the tracker, answers come back the same way).
fn announce(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, ob: &mut Outbox) {
    let Some(live) = p.live.as_mut() else { return };
    if live
        .last_announce
        .is_some_and(|t| now < t + ctx.cfg.announce_interval_us)
    {
        return;
    }
    let pending = live.conns.iter().filter(|c| !c.open && c.initiator).count();
    let want = live
        .swarm
        .wanted_neighbours()
        .saturating_sub(pending)
        .min(MAX_OFFERS);
    if want == 0 || ctx.tracker.len() <= 1 {
        return;
    }
    live.last_announce = Some(now);
    let mut chosen: Vec<u32> = Vec::with_capacity(want);
    for _ in 0..want * 3 {
        if chosen.len() >= want {
            break;
        }
        let q = ctx.tracker[live.rng.below(ctx.tracker.len() as u64) as usize];
        if q == me || chosen.contains(&q) || live.conns.iter().any(|c| c.peer == q) {
            continue;
        }
        chosen.push(q);
    }
    let up = ctx.lat_tracker(me);
    for q in chosen {
        let conn = new_pending(p, me, now, q);
        p.metrics.offers += 1;
        let t = now + up + ctx.lat_tracker(q);
        send(ob, p, me, q, t, Ev::Offer { from: me, conn });
    }
}

/// Records an outgoing connection attempt to `q`; returns its id.
fn new_pending(p: &mut PeerState, me: u32, now: u64, q: u32) -> u64 {
    let Some(live) = p.live.as_mut() else {
        return 0;
    };
    live.conn_counter += 1;
    let conn = ((me as u64) << 32) | live.conn_counter;
    live.conns.push(Conn {
        peer: q,
        id: conn,
        open: false,
        initiator: true,
        queue: VecDeque::new(),
        buffered: 0,
    });
    push(
        p,
        me,
        now + PENDING_TIMEOUT_US,
        Ev::Expire { peer: q, conn },
    );
    conn
}

/// The binding's decision on an incoming offer: refuse when already connected (or connecting:
/// on glare the lower index's offer wins) or when at the core's maximum degree.
fn accept_offer(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, from: u32, conn: u64) -> bool {
    let Some(live) = p.live.as_mut() else {
        return false;
    };
    if from == me {
        return false;
    }
    if let Some(i) = live.conns.iter().position(|c| c.peer == from) {
        let c = &live.conns[i];
        if c.open || !c.initiator || me < from {
            return false;
        }
        live.conns.swap_remove(i); // glare: their offer wins
    }
    if live.conns.len() >= live.swarm.config().max_degree {
        p.metrics.offers_refused += 1;
        return false;
    }
    live.conns.push(Conn {
        peer: from,
        id: conn,
        open: false,
        initiator: false,
        queue: VecDeque::new(),
        buffered: 0,
    });
    let _ = ctx;
    push(
        p,
        me,
        now + PENDING_TIMEOUT_US,
        Ev::Expire { peer: from, conn },
    );
    true
}

/// The answer to our offer arrived: ICE, DTLS and SCTP take a few round trips, then both ends
/// see the channel open (the answerer slightly earlier, so that nothing it sends can arrive
/// before the offerer knows the channel).
fn on_answer(
    ctx: &Ctx,
    p: &mut PeerState,
    me: u32,
    now: u64,
    from: u32,
    conn: u64,
    ob: &mut Outbox,
) {
    let Some(live) = p.live.as_mut() else { return };
    if !live
        .conns
        .iter()
        .any(|c| c.id == conn && c.peer == from && c.initiator && !c.open)
    {
        return;
    }
    let lat = ctx.lat(me, from);
    let setup = ctx.cfg.setup_fixed_us + (ctx.cfg.setup_rtts * 2.0 * lat as f64) as u64;
    let setup = setup.max(2 * lat);
    push(p, me, now + setup, Ev::Open { peer: from, conn });
    send(
        ob,
        p,
        me,
        from,
        now + setup - lat / 2,
        Ev::Open { peer: me, conn },
    );
}

/// Hands a message from the core to the transport (after a malicious peer had its way with it).
fn transmit(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, to: u32, data: Bytes) {
    let spec = &ctx.specs[me as usize];
    let data = match spec.behaviour {
        Behaviour::Forger | Behaviour::Withholder => match tamper(ctx, p, spec.behaviour, data) {
            Some(d) => d,
            None => return,
        },
        _ => data,
    };
    let Some(live) = p.live.as_mut() else { return };
    let Some(c) = live.conns.iter_mut().find(|c| c.peer == to && c.open) else {
        p.metrics.sent_unconnected += 1;
        return;
    };
    let len = data.len();
    let payload = ctx.wire.piece_payload(&data);
    c.buffered += len;
    c.queue.push_back(data);
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
    let tag = ctx.wire.tag(&data);
    if tag != Some(ctx.wire.piece_tag) && tag != Some(ctx.wire.header_tag) {
        return Some(data);
    }
    if b == Behaviour::Withholder {
        if tag == Some(ctx.wire.piece_tag) {
            p.metrics.tampered += 1;
            return None;
        }
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

/// Acts on everything the core wants done, then re-arms its timer.
fn drain(ctx: &Ctx, p: &mut PeerState, me: u32, now: u64, ob: &mut Outbox, st: &mut EngineStats) {
    loop {
        let Some(live) = p.live.as_mut() else { return };
        let Some(out) = live.swarm.poll_output() else {
            break;
        };
        // Outputs the core may add later are ignored until the simulator models them.
        #[allow(unreachable_patterns)]
        match out {
            Output::Transmit { peer, data } => {
                if let Some(to) = peer_index(ctx.specs, &peer) {
                    transmit(ctx, p, me, now, to, data);
                } else {
                    p.metrics.sent_unconnected += 1;
                }
            }
            Output::Disconnect { peer, reason } => {
                let Some(to) = peer_index(ctx.specs, &peer) else {
                    continue;
                };
                if let Some(i) = live.conns.iter().position(|c| c.peer == to) {
                    let c = live.conns.swap_remove(i);
                    let t = now + ctx.lat(me, to);
                    send(
                        ob,
                        p,
                        me,
                        to,
                        t,
                        Ev::Closed {
                            peer: me,
                            conn: c.id,
                        },
                    );
                }
                p.metrics
                    .on_disconnect(&reason, ctx.specs[to as usize].behaviour);
            }
            Output::Init(init) => {
                let ok = init.data == ctx.truth.init && init.mime == ctx.truth.mime;
                p.metrics.on_init(now, ok);
            }
            Output::Play(seg) => {
                let truth = ctx.truth.segments.get(seg.seq as usize);
                let genuine = truth.is_some_and(|(m, d, _)| {
                    *d == seg.data && m.pts_us == seg.pts_us && m.keyframe == seg.keyframe
                });
                let (pts, published) = truth.map(|(m, _, t)| (m.pts_us, *t)).unwrap_or((0, 0));
                p.metrics
                    .on_play(ctx.cfg, now, seg.seq, pts, published, genuine);
            }
            Output::Skip { seq } => p.metrics.on_skip(seq),
            Output::Connect { peer } => {
                let Some(q) = peer_index(ctx.specs, &peer) else {
                    continue;
                };
                if q == me || live.conns.iter().any(|c| c.peer == q) {
                    continue;
                }
                if live.conns.len() >= live.swarm.config().max_degree {
                    continue;
                }
                let conn = new_pending(p, me, now, q);
                p.metrics.pex_offers += 1;
                let payload = signal_payload(ctx, false, conn);
                if let Some(live) = p.live.as_mut() {
                    live.swarm.handle_input(
                        Instant::from_micros(now),
                        Input::SendSignal { to: peer, payload },
                    );
                    st.inputs += 1;
                }
            }
            Output::Signal { from, payload } => {
                let Some(q) = peer_index(ctx.specs, &from) else {
                    continue;
                };
                match parse_signal(&payload) {
                    Some((false, conn)) => {
                        if accept_offer(ctx, p, me, now, q, conn) {
                            let answer = signal_payload(ctx, true, conn);
                            if let Some(live) = p.live.as_mut() {
                                live.swarm.handle_input(
                                    Instant::from_micros(now),
                                    Input::SendSignal {
                                        to: from,
                                        payload: answer,
                                    },
                                );
                                st.inputs += 1;
                            }
                        }
                    }
                    Some((true, conn)) => on_answer(ctx, p, me, now, q, conn, ob),
                    None => p.metrics.bad_signals += 1,
                }
            }
            _ => {}
        }
    }
    let Some(live) = p.live.as_mut() else { return };
    let want = live.swarm.poll_timeout().map(|t| t.as_micros());
    if let Some(t) = want {
        // A core asking to be woken in the past is woken next millisecond (and counted), so a
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
