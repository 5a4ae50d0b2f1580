//! Nodes wired by an in-memory platform: a fake tracker that forwards offers and answers, fake
//! SDP that names the connection it belongs to, channels with a fixed latency, a virtual clock.

use super::*;
use crate::core::{Config, SegmentMeta, StreamKey};
use std::collections::{BTreeMap, BTreeSet};

const LATENCY_US: u64 = 10_000;

#[derive(Debug)]
enum Ev {
    Node(usize, Event),
    Publish,
}

struct Host {
    nodes: Vec<Node>,
    alive: Vec<bool>,
    now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    /// Tracker registry: peer id -> node, in announce order.
    registry: Vec<(PeerId, usize)>,
    /// Which (node, conn) the other end of each link is.
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    opened: BTreeSet<(usize, ConnId)>,
    played: Vec<Vec<u64>>,
    published: u64,
    offer_rr: usize,
    closes: Vec<(usize, CloseReason)>,
    /// Tracker-forwarded offers a node holds back until released (to make offers cross).
    hold_offers: bool,
    held: Vec<(usize, Event)>,
}

impl Host {
    fn new(viewers: usize, config: impl Fn(usize) -> Config) -> Host {
        let key = StreamKey::from_secret([9; 32]);
        let stream = key.stream_id();
        let mut nodes = Vec::new();
        for i in 0..=viewers {
            let role = if i == 0 {
                NodeRole::Source {
                    key: StreamKey::from_secret(key.secret()),
                }
            } else {
                NodeRole::Viewer { stream }
            };
            let mut id = [0u8; 20];
            id[0] = 10 + i as u8;
            let mut cfg = config(i);
            cfg.seed = i as u64;
            let nc = NodeConfig::new(role, vec!["ws://tracker".into()], PeerId(id), cfg);
            nodes.push(Node::new(nc, 100 + i as u64));
        }
        let n = nodes.len();
        let mut h = Host {
            nodes,
            alive: vec![true; n],
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            registry: Vec::new(),
            links: BTreeMap::new(),
            opened: BTreeSet::new(),
            played: vec![Vec::new(); n],
            published: 0,
            offer_rr: 0,
            closes: Vec::new(),
            hold_offers: false,
            held: Vec::new(),
        };
        h.nodes[0]
            .publish_init(Instant::ZERO, "video/mp4", vec![1; 100])
            .unwrap();
        h.at(0, Ev::Publish);
        h
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn tell(&mut self, delay: u64, i: usize, ev: Event) {
        self.at(self.now + delay, Ev::Node(i, ev));
    }

    fn parse_sdp(sdp: &str) -> (usize, ConnId) {
        let mut it = sdp.split(' ').skip(1);
        let n = it.next().unwrap().parse().unwrap();
        let c = it.next().unwrap().parse().unwrap();
        (n, ConnId(c))
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].poll_action() {
            if std::env::var("TRACE").is_ok() {
                eprintln!("{} node {i}: {a:?}", self.now);
            }
            match a {
                Action::TrackerConnect { tracker, .. } => {
                    self.tell(LATENCY_US, i, Event::TrackerOpen { tracker })
                }
                Action::TrackerSend { tracker, request } => self.tracker(i, tracker, request),
                Action::TrackerClose { .. } => {}
                Action::CreateOffer { conn } => {
                    let sdp = format!("offer {i} {}", conn.0);
                    self.tell(1_000, i, Event::OfferCreated { conn, sdp });
                }
                Action::AcceptOffer { conn, sdp } => {
                    let remote = Self::parse_sdp(&sdp);
                    self.links.insert((i, conn), remote);
                    let sdp = format!("answer {i} {}", conn.0);
                    self.tell(1_000, i, Event::AnswerCreated { conn, sdp });
                }
                Action::ApplyAnswer { conn, sdp } => {
                    let remote = Self::parse_sdp(&sdp);
                    if self.links.get(&remote) != Some(&(i, conn)) {
                        continue; // the other end gave up meanwhile
                    }
                    self.links.insert((i, conn), remote);
                    self.tell(3 * LATENCY_US, i, Event::ChannelOpen { conn });
                    self.tell(
                        3 * LATENCY_US,
                        remote.0,
                        Event::ChannelOpen { conn: remote.1 },
                    );
                }
                Action::Send { conn, data } => {
                    if let Some(&(j, c)) = self.links.get(&(i, conn)) {
                        self.tell(LATENCY_US, j, Event::ChannelMessage { conn: c, data });
                    }
                }
                Action::Close { conn, reason } => {
                    self.closes.push((i, reason));
                    if let Some((j, c)) = self.links.remove(&(i, conn)) {
                        self.links.remove(&(j, c));
                        self.tell(LATENCY_US, j, Event::ChannelClosed { conn: c });
                    }
                }
                Action::Init(_) => {}
                Action::Play(seg) => self.played[i].push(seg.seq),
                Action::Skip { .. } => {}
                Action::Rejoined { .. } => panic!("node {i} rejoined"),
            }
        }
    }

    /// The fake tracker: offers go round-robin to the other registered peers.
    fn tracker(&mut self, i: usize, tracker: usize, request: TrackerRequest) {
        match request {
            TrackerRequest::Announce(a) => {
                if a.event == AnnounceEvent::Stopped {
                    self.registry.retain(|(_, n)| *n != i);
                    return;
                }
                if !self.registry.iter().any(|(_, n)| *n == i) {
                    self.registry.push((a.peer_id, i));
                }
                let others: Vec<usize> = self
                    .registry
                    .iter()
                    .map(|(_, n)| *n)
                    .filter(|n| *n != i)
                    .collect();
                for o in a.offers {
                    if others.is_empty() {
                        break;
                    }
                    // SplitMix64 step: a tracker picks at random.
                    self.offer_rr = self.offer_rr.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let r = Rng(self.offer_rr as u64).next();
                    let to = others[(r % others.len() as u64) as usize];
                    let message = TrackerMessage::Offer {
                        peer: a.peer_id,
                        offer_id: binstr::encode(&o.offer_id),
                        sdp: o.sdp,
                    };
                    let ev = Event::TrackerMessage { tracker, message };
                    if self.hold_offers {
                        self.held.push((to, ev));
                    } else {
                        self.tell(2 * LATENCY_US, to, ev);
                    }
                }
                let message = TrackerMessage::Response {
                    interval: Some(120),
                    complete: Some(1),
                    incomplete: Some(self.registry.len() as u64 - 1),
                    warning: None,
                };
                self.tell(
                    2 * LATENCY_US,
                    i,
                    Event::TrackerMessage { tracker, message },
                );
            }
            TrackerRequest::Answer {
                peer_id,
                to,
                offer_id,
                sdp,
                ..
            } => {
                if let Some(&(_, j)) = self.registry.iter().find(|(p, _)| *p == to) {
                    let message = TrackerMessage::Answer {
                        peer: peer_id,
                        offer_id,
                        sdp,
                    };
                    self.tell(
                        2 * LATENCY_US,
                        j,
                        Event::TrackerMessage { tracker, message },
                    );
                }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.registry.retain(|(_, n)| *n != i);
        // Its channels fall silent; nothing tells the other ends.
        self.links.retain(|(a, _), (b, _)| *a != i && *b != i);
    }

    fn run_until(&mut self, until: u64) {
        loop {
            let next_ev = self.queue.keys().next().map(|k| k.0);
            let next_to = (0..self.nodes.len())
                .filter(|&i| self.alive[i])
                .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t.as_micros(), i)))
                .min();
            let t = next_ev
                .into_iter()
                .chain(next_to.map(|x| x.0))
                .min()
                .unwrap_or(u64::MAX);
            if t > until {
                self.now = until;
                return;
            }
            self.now = t.max(self.now);
            let now = Instant::from_micros(self.now);
            if next_ev == Some(t) {
                let (_, ev) = self.queue.pop_first().unwrap();
                match ev {
                    Ev::Node(i, e) => {
                        if self.alive[i] {
                            if let Event::ChannelOpen { conn } = &e {
                                self.opened.insert((i, *conn));
                            }
                            self.nodes[i].handle(now, e);
                            self.drain(i);
                        }
                    }
                    Ev::Publish => {
                        let meta = SegmentMeta {
                            pts_us: self.now,
                            duration_us: 200_000,
                            keyframe: true,
                        };
                        let seq = self.nodes[0]
                            .publish_segment(now, meta, vec![7; 20_000])
                            .unwrap();
                        assert_eq!(seq, self.published);
                        self.published += 1;
                        self.drain(0);
                        self.at(self.now + 200_000, Ev::Publish);
                    }
                }
            } else if let Some((_, i)) = next_to {
                self.nodes[i].handle(now, Event::Timeout);
                self.drain(i);
            }
        }
    }

    fn open_conns(&self, i: usize) -> usize {
        self.nodes[i].conns().open_count()
    }
}

#[test]
fn nodes_meet_through_the_tracker_and_viewers_play_what_the_source_publishes() {
    let mut h = Host::new(2, |_| Config::default());
    h.run_until(6_000_000);
    for v in 1..=2 {
        assert!(
            h.played[v].len() >= 15,
            "viewer {v} played {:?}",
            h.played[v]
        );
        let p = &h.played[v];
        assert!(p.windows(2).all(|w| w[1] == w[0] + 1), "in order: {p:?}");
        assert_eq!(
            h.open_conns(v),
            2,
            "viewer {v} knows the source and the other viewer"
        );
        assert_eq!(h.nodes[v].stats().neighbours, 2);
    }
    // The state the viewer is shown follows from the node's facts.
    let f = h.nodes[1].facts(Instant::from_micros(h.now));
    assert!(f.media_fresh && f.trackers_open == 1 && f.neighbours == 2);
}

#[test]
fn offers_that_cross_at_the_tracker_leave_one_connection_both_ends_agree_on() {
    // Two viewers, no source traffic needed: both announce with offers, the tracker holds the
    // forwarded offers and releases them together, so each side answers the other's offer
    // while its own is out.
    let mut h = Host::new(2, |_| Config::default());
    h.alive[0] = false; // the source stays out of it
                        // The tracker knows both before either announces, so each one's offers reach the other.
    for i in [1, 2] {
        h.registry.push((h.nodes[i].local_id(), i));
    }
    h.hold_offers = true;
    h.run_until(100_000);
    assert!(h.held.len() >= 2, "both offered: {:?}", h.held.len());
    h.hold_offers = false;
    for (to, ev) in std::mem::take(&mut h.held) {
        h.tell(0, to, ev);
    }
    h.run_until(2_000_000);
    assert_eq!(h.open_conns(1), 1);
    assert_eq!(h.open_conns(2), 1);
    // The surviving connections are the two ends of one link.
    let c1 = h.nodes[1].conns().of_peer(&h.nodes[2].local_id()).unwrap();
    let c2 = h.nodes[2].conns().of_peer(&h.nodes[1].local_id()).unwrap();
    assert_eq!(h.links.get(&(1, c1)), Some(&(2, c2)));
    assert!(
        h.closes.iter().any(|(_, r)| *r == CloseReason::Duplicate),
        "{:?}",
        h.closes
    );
    assert_eq!(h.nodes[1].stats().neighbours, 1);
    assert_eq!(h.nodes[2].stats().neighbours, 1);
}

#[test]
fn a_vanished_neighbour_is_replaced_and_playback_goes_on() {
    // Viewers want two neighbours each; viewer 3 joins the tracker last.
    let mut h = Host::new(3, |_| Config {
        target_degree: 2,
        ..Config::default()
    });
    h.run_until(5_000_000);
    let before = h.played[1].len();
    assert!(before >= 10, "viewer 1 played {before}");
    // Kill a viewer that someone relies on: viewer 2.
    h.kill(2);
    h.run_until(15_000_000);
    for v in [1, 3] {
        let p = &h.played[v];
        let last = *p.last().unwrap();
        assert!(
            last + 10 >= h.published,
            "viewer {v} is live: {last} of {}",
            h.published
        );
        let n = h.nodes[v].stats().neighbours;
        assert_eq!(n, 2, "viewer {v} is back to two neighbours");
        assert!(
            h.nodes[v].conns().of_peer(&h.nodes[2].local_id()).is_none(),
            "viewer {v} dropped the dead one"
        );
    }
    assert!(h
        .closes
        .iter()
        .any(|(_, r)| matches!(r, CloseReason::Core(DisconnectReason::Silent))));
}
