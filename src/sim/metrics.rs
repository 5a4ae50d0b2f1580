//! What is measured, per peer session while the run goes, and the report built from it at the
//! end (issue 4's metrics, computed by the simulator from what it saw, not from the core's own
//! claims: played bytes are compared with the source's true bytes, deadlines are recomputed).

use super::config::SimConfig;
use super::population::{Behaviour, PeerSpec};
use crate::core::wire::{Decoded, Message};
use crate::core::{DisconnectReason, SegmentHeader, SegmentMeta, SignedHeader, Stats};
use serde::Serialize;

/// Classifies encoded messages for the counters: the piece and header tags are learnt from the
/// real encoder (so a reordered `Message` enum cannot fool it), and a piece's payload length is
/// read by the wire module's own borrowing decoder (no copy of the piece).
pub struct WireClass {
    /// First byte of an encoded `Message::Piece`.
    piece_tag: u8,
    /// First byte of an encoded `Message::Header`.
    header_tag: u8,
}

impl Default for WireClass {
    fn default() -> Self {
        Self::new()
    }
}

impl WireClass {
    /// Learns the tags from the real encoder.
    pub fn new() -> Self {
        let piece = Message::Piece {
            seq: 300,
            index: 2,
            data: vec![7; 1000],
        }
        .encode();
        let header = Message::Header(SignedHeader {
            header: SegmentHeader::describe(
                1,
                1,
                SegmentMeta {
                    pts_us: 0,
                    duration_us: 1,
                    keyframe: true,
                },
                0,
                &[1],
            ),
            signature: [[0; 32]; 2],
        })
        .encode();
        WireClass {
            piece_tag: piece[0],
            header_tag: header[0],
        }
    }

    /// Payload bytes if `data` is a valid piece message.
    pub fn piece_payload(&self, data: &[u8]) -> Option<usize> {
        if data.first() != Some(&self.piece_tag) {
            return None;
        }
        match Message::decode_borrowed(data) {
            Ok(Decoded::Piece { data, .. }) => Some(data.len()),
            _ => None,
        }
    }

    /// Whether `data` starts like a header message (the forger decodes it to be sure).
    pub fn is_header(&self, data: &[u8]) -> bool {
        data.first() == Some(&self.header_tag)
    }
}

/// Disconnects the core ordered, by reason and by what the cut neighbour really was.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cuts {
    /// Reason `Forged`, neighbour malicious (a true positive).
    pub forged_malicious: u64,
    /// Reason `Forged`, neighbour honest (a false accusation: must be 0).
    pub forged_honest: u64,
    /// Reason `Malformed`.
    pub malformed: u64,
    /// Reason `Protocol`.
    pub protocol: u64,
    /// Reason `Flood`.
    pub flood: u64,
    /// Reason `Useless`, neighbour malicious or a free-rider.
    pub useless_bad: u64,
    /// Reason `Useless`, neighbour honest.
    pub useless_honest: u64,
    /// Reason `Surplus`.
    pub surplus: u64,
    /// Reason `Leaving`.
    pub leaving: u64,
    /// Reason `GoodbyeReceived`.
    pub goodbye: u64,
    /// Reason `Banned` (a cut-off neighbour came back).
    pub banned: u64,
    /// Reason `Silent` (heard nothing from it: vanished without a goodbye).
    pub silent: u64,
    /// Any other reason.
    pub other: u64,
}

impl Cuts {
    fn add(&mut self, o: &Cuts) {
        self.forged_malicious += o.forged_malicious;
        self.forged_honest += o.forged_honest;
        self.malformed += o.malformed;
        self.protocol += o.protocol;
        self.flood += o.flood;
        self.useless_bad += o.useless_bad;
        self.useless_honest += o.useless_honest;
        self.surplus += o.surplus;
        self.leaving += o.leaving;
        self.goodbye += o.goodbye;
        self.banned += o.banned;
        self.silent += o.silent;
        self.other += o.other;
    }
}

/// Measurements of one peer session.
#[derive(Debug, Clone, Default)]
pub struct PeerMetrics {
    /// Session index.
    pub index: u32,
    /// Behaviour of the session.
    pub behaviour: Option<Behaviour>,
    /// Capacity class.
    pub class: u8,
    /// Upload capacity, bit/s.
    pub up_bps: u64,
    /// Scheduled end of the session (leave or end of run), µs.
    pub session_end_us: u64,
    /// Joined at.
    pub joined_us: Option<u64>,
    /// Left (or the run ended) at.
    pub left_us: Option<u64>,
    /// First `Play`: (time, seq, pts).
    pub first_play: Option<(u64, u64, u64)>,
    /// First `Init` at.
    pub init_at: Option<u64>,
    /// An init segment that differs from the source's was handed to the player.
    pub init_forged: bool,
    /// Segments due before the session ended that played on time.
    pub due_on_time: u64,
    /// ... that played after their deadline.
    pub due_late: u64,
    /// ... that the core skipped.
    pub due_skipped: u64,
    /// All `Play` outputs.
    pub played: u64,
    /// All `Skip` outputs.
    pub skipped: u64,
    /// `Play` outputs not in increasing sequence order.
    pub out_of_order: u64,
    last_seq: Option<u64>,
    /// Played segments whose bytes differ from the source's.
    pub forged_played: u64,
    /// Delivery latencies (µs) of segments published after this peer started playing.
    pub latencies: Vec<u32>,
    /// Bytes handed to the transport.
    pub wire_up: u64,
    /// Piece payload bytes handed to the transport.
    pub payload_up: u64,
    /// Bytes handed to the transport per second of the run (kept for the source only).
    pub up_per_sec: Vec<u64>,
    /// Bytes received.
    pub wire_down: u64,
    /// Piece payload bytes received.
    pub payload_down: u64,
    /// ... of which from the source.
    pub payload_from_source: u64,
    /// Transports opened.
    pub connections: u64,
    /// Offers sent through the tracker.
    pub offers: u64,
    /// Offers sent through neighbours (peer exchange).
    pub pex_offers: u64,
    /// Connection attempts that never opened.
    pub setup_expired: u64,
    /// Core asked to send to a peer with no open transport.
    pub sent_unconnected: u64,
    /// Messages that arrived after their transport closed.
    pub dropped_closed: u64,
    /// Times the node started over as a new viewer (source restart, or no media for long).
    pub rejoins: u64,
    /// Messages a malicious peer altered or dropped.
    pub tampered: u64,
    /// Times the core asked to be woken at or before the time it was just woken at.
    pub past_timers: u64,
    /// Segments the source published.
    pub published: u64,
    /// Disconnects this peer's core ordered.
    pub cuts: Cuts,
    /// The core's own statistics when the session ended.
    pub core_stats: Option<Stats>,
    /// Unexpected things (API errors), first few.
    pub notes: Vec<String>,
}

impl PeerMetrics {
    /// Fresh measurements for a session.
    pub fn new(index: u32, spec: &PeerSpec) -> Self {
        PeerMetrics {
            index,
            behaviour: Some(spec.behaviour),
            class: spec.class,
            up_bps: spec.up_bps,
            session_end_us: spec.leave.map(|(t, _)| t).unwrap_or(u64::MAX),
            ..Default::default()
        }
    }

    /// Records something unexpected (kept short).
    pub fn note(&mut self, s: String) {
        if self.notes.len() < 3 {
            self.notes.push(s);
        }
    }

    /// The core ordered a disconnect of a neighbour that behaves as `them`.
    pub fn on_disconnect(&mut self, reason: &DisconnectReason, them: Behaviour) {
        let bad = them.malicious();
        let c = &mut self.cuts;
        // The core may grow new reasons; they are counted as `other` until named here.
        #[allow(unreachable_patterns)]
        match reason {
            DisconnectReason::Forged if bad => c.forged_malicious += 1,
            DisconnectReason::Forged => c.forged_honest += 1,
            DisconnectReason::Malformed(_) => c.malformed += 1,
            DisconnectReason::Protocol(_) => c.protocol += 1,
            DisconnectReason::Flood => c.flood += 1,
            DisconnectReason::Useless if bad || them == Behaviour::FreeRider => c.useless_bad += 1,
            DisconnectReason::Useless => c.useless_honest += 1,
            DisconnectReason::Surplus => c.surplus += 1,
            DisconnectReason::Leaving => c.leaving += 1,
            DisconnectReason::GoodbyeReceived => c.goodbye += 1,
            DisconnectReason::Banned => c.banned += 1,
            DisconnectReason::Silent => c.silent += 1,
            _ => c.other += 1,
        }
    }

    /// The player got the init segment.
    pub fn on_init(&mut self, now: u64, genuine: bool) {
        self.init_at.get_or_insert(now);
        if !genuine {
            self.init_forged = true;
        }
    }

    /// The player got segment `seq` (true pts and publish time given by the caller).
    pub fn on_play(
        &mut self,
        cfg: &SimConfig,
        now: u64,
        seq: u64,
        pts: u64,
        published: u64,
        genuine: bool,
    ) {
        self.played += 1;
        if !genuine {
            self.forged_played += 1;
        }
        if self.last_seq.is_some_and(|l| seq <= l) {
            self.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        let (t0, _, pts0) = *self.first_play.get_or_insert((now, seq, pts));
        let deadline = t0 + pts.saturating_sub(pts0) + cfg.buffer_us;
        if deadline <= self.session_end_us.min(cfg.duration_us) {
            if now <= deadline {
                self.due_on_time += 1;
            } else {
                self.due_late += 1;
            }
        }
        if published >= t0 && published > 0 {
            self.latencies
                .push(now.saturating_sub(published).min(u32::MAX as u64) as u32);
        }
    }

    /// The core gave up on segment `seq`.
    pub fn on_skip(&mut self, _seq: u64) {
        self.skipped += 1;
        if self.first_play.is_some() {
            self.due_skipped += 1;
        }
    }

    /// Segments due at this peer: from its first played one, whose deadline passed before the
    /// session ended, among those the source published.
    pub fn due(&self, cfg: &SimConfig, published: u64) -> u64 {
        let Some((t0, seq0, _)) = self.first_play else {
            return 0;
        };
        let end = self
            .left_us
            .unwrap_or(cfg.duration_us)
            .min(self.session_end_us);
        let span = end.saturating_sub(t0 + cfg.buffer_us);
        let n = span / cfg.segment_us + 1;
        n.min(published.saturating_sub(seq0))
    }
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// From µs samples (sorted in place).
    pub fn of(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let q = |p: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] as f64 / 1000.0
        };
        Percentiles {
            count: samples.len(),
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

/// Continuity of playback.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Continuity {
    /// Share of due segments played by their deadline.
    pub index: f64,
    /// Segments due.
    pub due: u64,
    /// Played by the deadline.
    pub on_time: u64,
    /// Played after it.
    pub late: u64,
    /// Skipped by the core.
    pub skipped: u64,
    /// Neither played nor skipped by the deadline (stalled).
    pub missing: u64,
}

/// Per capacity class: who starves.
#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    /// Upload as a multiple of the bitrate (before `capacity_scale`).
    pub up_multiple: f64,
    /// Honest sessions.
    pub sessions: usize,
    /// Continuity index of the class.
    pub continuity: f64,
    /// Honest sessions online >= 10 s that never played.
    pub never_started: usize,
    /// Mean upload utilisation (bytes sent / capacity x time online).
    pub utilisation_mean: f64,
    /// Median utilisation.
    pub utilisation_p50: f64,
    /// Startup p95, ms.
    pub startup_p95_ms: f64,
    /// Delivery latency p95, ms.
    pub latency_p95_ms: f64,
    /// Honest sessions whose core reported insufficient swarm capacity (`Stats::capacity_short`)
    /// when they ended (or at the end of the run).
    pub capacity_short: usize,
}

/// The source's load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceReport {
    /// Bytes the source sent (all messages) / (bitrate x duration).
    pub upload_multiple: f64,
    /// The busiest second's source upload / bitrate.
    pub upload_multiple_peak_1s: f64,
    /// Source piece payload / all piece payload delivered.
    pub share_of_delivered: f64,
    /// 1 - share.
    pub offload: f64,
}

/// Integrity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Security {
    /// Played segments whose bytes differ from the source's (must be 0).
    pub forged_played: u64,
    /// Sessions given a forged init segment (must be 0).
    pub forged_init: u64,
    /// Malicious sessions.
    pub malicious_sessions: usize,
    /// Messages they altered or dropped.
    pub tampered_messages: u64,
    /// Disconnects by reason.
    pub cuts: Cuts,
}

/// A goal from issue 4 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What.
    pub goal: String,
    /// Measured.
    pub value: String,
    /// Met.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub config: SimConfig,
    /// Sessions simulated (viewers incl. replacements, plus the source).
    pub sessions: usize,
    /// Wall-clock time of the run, s.
    pub wall_s: f64,
    /// CPU time of the run (user + system, all threads), s: on a shared machine the fairer
    /// figure than wall time.
    pub cpu_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_mem_mib: f64,
    /// Events processed.
    pub events: u64,
    /// Inputs fed to cores.
    pub core_inputs: u64,
    /// Delivery latency: segment published -> verified and handed to the player, ms.
    pub latency_ms: Percentiles,
    /// Latency CDF: (ms, share) at 101 quantiles.
    pub latency_cdf: Vec<(f64, f64)>,
    /// Join -> first playable segment, ms (honest viewers that started).
    pub startup_ms: Percentiles,
    /// Honest viewer sessions online >= 10 s.
    pub honest_sessions: usize,
    /// ... of which never played anything.
    pub never_started: usize,
    /// Playback continuity of honest viewers.
    pub continuity: Continuity,
    /// By capacity class.
    pub by_class: Vec<ClassReport>,
    /// The source.
    pub source: SourceReport,
    /// (all bytes sent - piece payload) / piece payload, every peer.
    pub control_overhead: f64,
    /// Jain's fairness index of upload utilisation over honest viewers.
    pub upload_fairness_jain: f64,
    /// Integrity.
    pub security: Security,
    /// Transports opened (counted once per pair).
    pub connections: u64,
    /// Offers through the tracker.
    pub tracker_offers: u64,
    /// Offers through neighbours.
    pub pex_offers: u64,
    /// Attempts that never opened.
    pub setup_expired: u64,
    /// Core sent to a peer with no transport.
    pub sent_unconnected: u64,
    /// Out-of-order `Play` outputs.
    pub out_of_order_plays: u64,
    /// Times viewers' nodes rejoined the swarm from scratch.
    pub rejoins: u64,
    /// The cores' own duplicate piece bytes / piece payload received (wasted download).
    pub duplicate_share: f64,
    /// Pieces the cores pulled (repair) rather than got pushed.
    pub pieces_pulled: u64,
    /// Stalls the cores reported.
    pub core_stalls: u64,
    /// Core timers in the past (a spin guard fired).
    pub past_timers: u64,
    /// Segments the source published.
    pub published: u64,
    /// API errors and oddities seen.
    pub notes: Vec<String>,
    /// The first few honest sessions that never played, with what the simulator knows of them.
    pub never_started_detail: Vec<String>,
    /// Issue 4's goals, judged for this run.
    pub goals: Vec<Goal>,
}

/// CPU time this process has used so far (user + system, every thread, including threads that
/// ended), s; 0 when unknown. Read from `/proc/self/stat`, whose tick is `USER_HZ` = 100 on Linux.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces): state is field 3, utime 14,
            // stime 15 (1-based), i.e. index 11 and 12 after the closing parenthesis.
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident set (VmHWM) of this process, MiB; 0 when unknown.
pub fn peak_mem_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident set (VmRSS) of this process now, MiB; 0 when unknown.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A kB field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Report {
    /// Builds the report from every session's measurements.
    pub fn build(
        cfg: &SimConfig,
        specs: &[PeerSpec],
        metrics: &mut [PeerMetrics],
        events: u64,
        core_inputs: u64,
        wall_s: f64,
        cpu_s: f64,
    ) -> Report {
        let published = metrics.first().map(|m| m.published).unwrap_or(0);
        let mut lat_all: Vec<u32> = Vec::new();
        let mut startups: Vec<u32> = Vec::new();
        let mut cont = Continuity::default();
        let mut honest_sessions = 0;
        let mut never_started = 0;
        let mut sec = Security::default();
        let (mut wire_up_all, mut payload_up_all, mut payload_down_all) = (0u64, 0u64, 0u64);
        let mut utils: Vec<f64> = Vec::new();
        let nclass = cfg.mix.len();
        let mut class_cont = vec![(0u64, 0u64); nclass];
        let mut class_sessions = vec![0usize; nclass];
        let mut class_never = vec![0usize; nclass];
        let mut class_short = vec![0usize; nclass];
        let mut class_util: Vec<Vec<f64>> = vec![Vec::new(); nclass];
        let mut class_startup: Vec<Vec<u32>> = vec![Vec::new(); nclass];
        let mut class_lat: Vec<Vec<u32>> = vec![Vec::new(); nclass];
        let mut notes = Vec::new();
        let mut never_detail = Vec::new();
        let mut r_conn = (0, 0, 0, 0, 0, 0, 0, 0);
        let (mut dup, mut pulled, mut stalls) = (0u64, 0u64, 0u64);
        for (spec, m) in specs.iter().zip(metrics.iter_mut()) {
            wire_up_all += m.wire_up;
            payload_up_all += m.payload_up;
            payload_down_all += m.payload_down;
            sec.forged_played += m.forged_played;
            sec.forged_init += m.init_forged as u64;
            sec.tampered_messages += m.tampered;
            sec.cuts.add(&m.cuts);
            r_conn.0 += m.connections;
            r_conn.1 += m.offers;
            r_conn.2 += m.pex_offers;
            r_conn.3 += m.setup_expired;
            r_conn.4 += m.sent_unconnected;
            r_conn.5 += m.out_of_order;
            r_conn.6 += m.past_timers;
            r_conn.7 += m.rejoins;
            if let Some(cs) = &m.core_stats {
                dup += cs.duplicate_bytes;
                pulled += cs.pieces_pulled;
                stalls += cs.stalls;
            }
            for n in &m.notes {
                if notes.len() < 10 && !notes.contains(n) {
                    notes.push(n.clone());
                }
            }
            if spec.behaviour.malicious() {
                sec.malicious_sessions += 1;
            }
            if spec.behaviour != Behaviour::Honest {
                continue;
            }
            let Some(joined) = m.joined_us else { continue };
            let left = m.left_us.unwrap_or(cfg.duration_us);
            let online = left.saturating_sub(joined);
            let c = spec.class as usize;
            if let Some(cs) = &m.core_stats {
                class_short[c] += cs.capacity_short as usize;
            }
            if online >= 10_000_000 {
                honest_sessions += 1;
                class_sessions[c] += 1;
                if m.first_play.is_none() {
                    never_started += 1;
                    class_never[c] += 1;
                    if never_detail.len() < 5 {
                        let cs = m.core_stats.clone().unwrap_or_default();
                        never_detail.push(format!(
                            "session {} ({:?}, class {}): joined {:.2} s, left {:.2} s, init {:?}, transports opened {}, offers {}+{} relayed, expired {}, core: neighbours {}, newest seq {:?}, payload down {} B",
                            m.index,
                            spec.behaviour,
                            spec.class,
                            joined as f64 / 1e6,
                            left as f64 / 1e6,
                            m.init_at.map(|t| t as f64 / 1e6),
                            m.connections,
                            m.offers,
                            m.pex_offers,
                            m.setup_expired,
                            cs.neighbours,
                            cs.newest_seq,
                            m.payload_down
                        ));
                    }
                }
            }
            if let Some((t, _, _)) = m.first_play {
                let s = t.saturating_sub(joined).min(u32::MAX as u64) as u32;
                startups.push(s);
                class_startup[c].push(s);
            }
            let due = m.due(cfg, published);
            let on_time = m.due_on_time.min(due);
            cont.due += due;
            cont.on_time += on_time;
            cont.late += m.due_late;
            cont.skipped += m.due_skipped;
            class_cont[c].0 += due;
            class_cont[c].1 += on_time;
            if online > 0 && spec.up_bps > 0 {
                let u = (m.wire_up * 8) as f64 / (spec.up_bps as f64 * online as f64 / 1e6);
                utils.push(u);
                class_util[c].push(u);
            }
            class_lat[c].extend_from_slice(&m.latencies);
            lat_all.append(&mut m.latencies);
        }
        cont.missing = cont
            .due
            .saturating_sub(cont.on_time + cont.late + cont.skipped);
        cont.index = if cont.due > 0 {
            cont.on_time as f64 / cont.due as f64
        } else {
            f64::NAN
        };
        let latency_ms = Percentiles::of(&mut lat_all);
        let latency_cdf = if lat_all.is_empty() {
            Vec::new()
        } else {
            (0..=100)
                .map(|i| {
                    let q = i as f64 / 100.0;
                    let idx = ((lat_all.len() - 1) as f64 * q).round() as usize;
                    (lat_all[idx] as f64 / 1000.0, q)
                })
                .collect()
        };
        let startup_ms = Percentiles::of(&mut startups);
        let by_class = (0..nclass)
            .map(|c| ClassReport {
                up_multiple: cfg.mix[c].up,
                sessions: class_sessions[c],
                continuity: if class_cont[c].0 > 0 {
                    class_cont[c].1 as f64 / class_cont[c].0 as f64
                } else {
                    f64::NAN
                },
                never_started: class_never[c],
                utilisation_mean: mean(&class_util[c]),
                utilisation_p50: median(&mut class_util[c]),
                startup_p95_ms: Percentiles::of(&mut class_startup[c]).p95,
                latency_p95_ms: Percentiles::of(&mut class_lat[c]).p95,
                capacity_short: class_short[c],
            })
            .collect();
        let src = &metrics[0];
        let stream_bytes = cfg.bitrate_bps as f64 / 8.0 * cfg.duration_us as f64 / 1e6;
        let share = if payload_down_all > 0 {
            src.payload_up as f64 / payload_down_all as f64
        } else {
            f64::NAN
        };
        let source = SourceReport {
            upload_multiple: src.wire_up as f64 / stream_bytes,
            upload_multiple_peak_1s: src.up_per_sec.iter().copied().max().unwrap_or(0) as f64 * 8.0
                / cfg.bitrate_bps as f64,
            share_of_delivered: share,
            offload: 1.0 - share,
        };
        let control_overhead = if payload_up_all > 0 {
            (wire_up_all - payload_up_all) as f64 / payload_up_all as f64
        } else {
            f64::NAN
        };
        let jain = {
            let s: f64 = utils.iter().sum();
            let s2: f64 = utils.iter().map(|u| u * u).sum();
            if s2 > 0.0 {
                s * s / (utils.len() as f64 * s2)
            } else {
                f64::NAN
            }
        };
        let mut r = Report {
            config: cfg.clone(),
            sessions: specs.len(),
            wall_s,
            cpu_s,
            peak_mem_mib: peak_mem_mib(),
            events,
            core_inputs,
            latency_ms,
            latency_cdf,
            startup_ms,
            honest_sessions,
            never_started,
            continuity: cont,
            by_class,
            source,
            control_overhead,
            upload_fairness_jain: jain,
            security: sec,
            connections: r_conn.0 / 2,
            tracker_offers: r_conn.1,
            pex_offers: r_conn.2,
            setup_expired: r_conn.3,
            sent_unconnected: r_conn.4,
            out_of_order_plays: r_conn.5,
            rejoins: r_conn.7,
            duplicate_share: if payload_down_all > 0 {
                dup as f64 / payload_down_all as f64
            } else {
                f64::NAN
            },
            pieces_pulled: pulled,
            core_stalls: stalls,
            past_timers: r_conn.6,
            published,
            notes,
            never_started_detail: never_detail,
            goals: Vec::new(),
        };
        r.goals = r.judge();
        r
    }

    /// Issue 4's goals (meant for N >= 1,000 with the default mix), judged on this run.
    fn judge(&self) -> Vec<Goal> {
        let churn = self.config.churn_per_min > 0.0;
        let cont_goal = if churn { 0.995 } else { 0.999 };
        let g = |goal: &str, value: String, met: bool| Goal {
            goal: goal.to_string(),
            value,
            met,
        };
        vec![
            g(
                "delivery latency p95 <= 500 ms",
                format!("{:.0} ms", self.latency_ms.p95),
                self.latency_ms.p95 <= 500.0,
            ),
            g(
                "delivery latency p99 <= 1 s",
                format!("{:.0} ms", self.latency_ms.p99),
                self.latency_ms.p99 <= 1000.0,
            ),
            g(
                "startup p95 <= 1.5 s",
                format!("{:.0} ms", self.startup_ms.p95),
                self.startup_ms.p95 <= 1500.0,
            ),
            g(
                if churn {
                    "continuity >= 99.5% (churn)"
                } else {
                    "continuity >= 99.9%"
                },
                format!("{:.3}%", self.continuity.index * 100.0),
                self.continuity.index >= cont_goal,
            ),
            g(
                "source upload <= 3x bitrate",
                format!("{:.2}x", self.source.upload_multiple),
                self.source.upload_multiple <= 3.0,
            ),
            g(
                "source upload in its busiest second <= 3x bitrate",
                format!("{:.2}x", self.source.upload_multiple_peak_1s),
                self.source.upload_multiple_peak_1s <= 3.0,
            ),
            g(
                "offload >= 99.7%",
                format!("{:.2}%", self.source.offload * 100.0),
                self.source.offload >= 0.997,
            ),
            g(
                "control overhead <= 3%",
                format!("{:.2}%", self.control_overhead * 100.0),
                self.control_overhead <= 0.03,
            ),
            g(
                "0 forged segments played",
                format!(
                    "{}",
                    self.security.forged_played + self.security.forged_init
                ),
                self.security.forged_played == 0 && self.security.forged_init == 0,
            ),
            g(
                "every honest viewer plays",
                format!(
                    "{} of {} never did",
                    self.never_started, self.honest_sessions
                ),
                self.never_started == 0,
            ),
        ]
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "swarmcast-sim: {} viewers ({} sessions), {:.2} Mbit/s, {:.0} s, seed {}, churn {:.0}%/min, malicious {:.0}%, free-riders {:.0}%, capacity x{}",
            c.peers,
            self.sessions - 1,
            c.bitrate_bps as f64 / 1e6,
            c.duration_us as f64 / 1e6,
            c.seed,
            c.churn_per_min * 100.0,
            c.malicious * 100.0,
            c.free_riders * 100.0,
            c.capacity_scale
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "  delivery latency   p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} samples)",
            l.p50, l.p95, l.p99, l.max, l.count
        );
        let st = &self.startup_ms;
        let _ = writeln!(
            s,
            "  startup            p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms  never started {}/{}",
            st.p50, st.p95, st.p99, st.max, self.never_started, self.honest_sessions
        );
        let k = &self.continuity;
        let _ = writeln!(
            s,
            "  continuity         {:.3}%  (due {}, on time {}, late {}, skipped {}, stalled {})",
            k.index * 100.0,
            k.due,
            k.on_time,
            k.late,
            k.skipped,
            k.missing
        );
        for (i, cl) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                s,
                "    class {i} ({:.1}x up): {} viewers, continuity {:.3}%, never started {}, upload use mean {:.0}% median {:.0}%, startup p95 {:.0} ms, latency p95 {:.0} ms, capacity short at end {}",
                cl.up_multiple,
                cl.sessions,
                cl.continuity * 100.0,
                cl.never_started,
                cl.utilisation_mean * 100.0,
                cl.utilisation_p50 * 100.0,
                cl.startup_p95_ms,
                cl.latency_p95_ms,
                cl.capacity_short
            );
        }
        let so = &self.source;
        let _ = writeln!(
            s,
            "  source upload      {:.2}x bitrate (busiest second {:.2}x), {:.3}% of delivered payload (offload {:.3}%)",
            so.upload_multiple,
            so.upload_multiple_peak_1s,
            so.share_of_delivered * 100.0,
            so.offload * 100.0
        );
        let _ = writeln!(
            s,
            "  control overhead   {:.2}%   upload fairness (Jain) {:.3}   duplicate download {:.2}%   pieces pulled {}   core stalls {}",
            self.control_overhead * 100.0,
            self.upload_fairness_jain,
            self.duplicate_share * 100.0,
            self.pieces_pulled,
            self.core_stalls
        );
        let se = &self.security;
        let _ = writeln!(
            s,
            "  integrity          forged played {} (init {}), malicious sessions {}, tampered msgs {}, cut as forgers: {} malicious / {} honest",
            se.forged_played, se.forged_init, se.malicious_sessions, se.tampered_messages, se.cuts.forged_malicious, se.cuts.forged_honest
        );
        let _ = writeln!(
            s,
            "  connections        {} opened, {} tracker offers, {} relayed offers, {} expired; cuts: useless {} (+{} honest), surplus {}, protocol {}, malformed {}, flood {}, banned {}, silent {}, other {}",
            self.connections,
            self.tracker_offers,
            self.pex_offers,
            self.setup_expired,
            se.cuts.useless_bad,
            se.cuts.useless_honest,
            se.cuts.surplus,
            se.cuts.protocol,
            se.cuts.malformed,
            se.cuts.flood,
            se.cuts.banned,
            se.cuts.silent,
            se.cuts.other
        );
        if self.sent_unconnected + self.out_of_order_plays + self.past_timers + self.rejoins > 0 {
            let _ = writeln!(
                s,
                "  oddities           sent without transport {}, out-of-order plays {}, past timers {}, rejoins {}",
                self.sent_unconnected, self.out_of_order_plays, self.past_timers, self.rejoins
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        for n in &self.never_started_detail {
            let _ = writeln!(s, "  never started: {n}");
        }
        let _ = writeln!(
            s,
            "  run                {:.1} s wall, {:.1} s CPU, peak memory {:.0} MiB, {} events, {} core inputs, {} threads",
            self.wall_s, self.cpu_s, self.peak_mem_mib, self.events, self.core_inputs, c.threads
        );
        let _ = writeln!(s, "  goals (issue 4):");
        for g in &self.goals {
            let _ = writeln!(
                s,
                "    [{}] {}: {}",
                if g.met { "met" } else { "NOT met" },
                g.goal,
                g.value
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_classification_matches_the_encoder() {
        let w = WireClass::new();
        let piece = Message::Piece {
            seq: 123_456,
            index: 63,
            data: vec![1; 16_000],
        }
        .encode();
        assert_eq!(w.piece_payload(&piece), Some(16_000));
        assert_eq!(w.piece_payload(&Message::Have { seq: 5 }.encode()), None);
        assert_eq!(w.piece_payload(&piece[..100]), None);
        assert_eq!(w.piece_payload(&[]), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!(Percentiles::of(&mut []).p50.is_nan());
    }

    #[test]
    fn deadlines_follow_the_first_played_segment() {
        let cfg = SimConfig::default();
        let mut m = PeerMetrics {
            session_end_us: u64::MAX,
            ..Default::default()
        };
        // First segment at 1 s: deadlines are 1 s + pts offset + 1 s buffer.
        m.on_play(&cfg, 1_000_000, 10, 2_000_000, 1_000_000, true);
        m.on_play(&cfg, 2_100_000, 11, 2_200_000, 1_200_000, true); // deadline 2.2 s: on time
        m.on_play(&cfg, 2_500_000, 12, 2_400_000, 1_400_000, false); // deadline 2.4 s: late
        assert_eq!((m.due_on_time, m.due_late, m.forged_played), (2, 1, 1));
        assert_eq!(m.latencies, vec![0, 900_000, 1_100_000]);
        m.left_us = Some(3_000_000);
        // Due: deadlines <= 3 s are seq 10..=15.
        assert_eq!(m.due(&cfg, 100), 6);
    }
}
