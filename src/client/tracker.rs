//! The WebTorrent tracker protocol over WebSocket (JSON text frames), as the npm
//! `bittorrent-tracker` client speaks it, and the JSON form of relayed SDP.
//!
//! A peer announces with `numwant` pre-made WebRTC offers; the tracker forwards each offer to one
//! other peer of the swarm; that peer answers through the tracker with `to_peer_id` and the
//! `offer_id`; the tracker hands the answer back. Ids (`info_hash`, `peer_id`, `offer_id`) are
//! 20-byte binary strings ([`super::binstr`]).

use super::binstr;
use crate::core::PeerId;
use serde_json::{json, Map, Value};

/// Announce `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// First announce on a connection.
    Started,
    /// Leaving the swarm (page unload, destroy).
    Stopped,
    /// The source announces `completed`: it has the whole stream, as a seeder would.
    Completed,
    /// A periodic re-announce.
    Update,
}

/// One pre-made offer carried by an announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferOut {
    /// 20 random bytes naming the offer, so the answer finds its connection.
    pub offer_id: [u8; 20],
    /// The offer's SDP, ICE candidates included (no trickle through the tracker).
    pub sdp: String,
}

/// An announce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The swarm.
    pub info_hash: [u8; 20],
    /// This peer.
    pub peer_id: PeerId,
    /// How many peers this peer wants offers forwarded to.
    pub numwant: usize,
    /// Lifecycle event.
    pub event: AnnounceEvent,
    /// Pre-made offers, at most `numwant`.
    pub offers: Vec<OfferOut>,
    /// Bytes uploaded so far (informational).
    pub uploaded: u64,
    /// Bytes downloaded so far (informational).
    pub downloaded: u64,
    /// `true` for the source (a "seeder": `left` is 0).
    pub seeder: bool,
}

impl Announce {
    /// The JSON text frame.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("action".into(), json!("announce"));
        m.insert("info_hash".into(), json!(binstr::encode(&self.info_hash)));
        m.insert("peer_id".into(), json!(binstr::encode(&self.peer_id.0)));
        m.insert("numwant".into(), json!(self.numwant));
        m.insert("uploaded".into(), json!(self.uploaded));
        m.insert("downloaded".into(), json!(self.downloaded));
        // A live stream never completes; viewers report "something left", the source nothing.
        m.insert("left".into(), json!(if self.seeder { 0 } else { 1 }));
        let event = match self.event {
            AnnounceEvent::Started => Some("started"),
            AnnounceEvent::Stopped => Some("stopped"),
            AnnounceEvent::Completed => Some("completed"),
            AnnounceEvent::Update => None,
        };
        if let Some(e) = event {
            m.insert("event".into(), json!(e));
        }
        if !self.offers.is_empty() {
            let offers: Vec<Value> = self
                .offers
                .iter()
                .map(|o| {
                    json!({
                        "offer": { "type": "offer", "sdp": o.sdp },
                        "offer_id": binstr::encode(&o.offer_id),
                    })
                })
                .collect();
            m.insert("offers".into(), Value::Array(offers));
        }
        Value::Object(m).to_string()
    }
}

/// What a peer sends a tracker: the node hands these to its host, which sends
/// [`TrackerRequest::to_json`] over the socket (or, in the simulator, models the tracker on the
/// typed value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerRequest {
    /// An announce (with offers, or `stopped`).
    Announce(Announce),
    /// The answer to another peer's offer.
    Answer {
        /// The swarm.
        info_hash: [u8; 20],
        /// This peer.
        peer_id: PeerId,
        /// The offerer.
        to: PeerId,
        /// The offer's id as the tracker forwarded it (a binary string).
        offer_id: String,
        /// The answer's SDP.
        sdp: String,
    },
}

impl TrackerRequest {
    /// The JSON text frame.
    pub fn to_json(&self) -> String {
        match self {
            TrackerRequest::Announce(a) => a.to_json(),
            TrackerRequest::Answer {
                info_hash,
                peer_id,
                to,
                offer_id,
                sdp,
            } => answer_json(*info_hash, *peer_id, *to, offer_id, sdp),
        }
    }
}

/// The announce that carries an answer to `to`'s offer `offer_id`.
pub fn answer_json(
    info_hash: [u8; 20],
    peer_id: PeerId,
    to: PeerId,
    offer_id: &str,
    sdp: &str,
) -> String {
    json!({
        "action": "announce",
        "info_hash": binstr::encode(&info_hash),
        "peer_id": binstr::encode(&peer_id.0),
        "to_peer_id": binstr::encode(&to.0),
        "answer": { "type": "answer", "sdp": sdp },
        "offer_id": offer_id,
    })
    .to_string()
}

/// A message from the tracker, as this peer acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerMessage {
    /// Reply to an announce: when to announce again, swarm counts, maybe a warning.
    Response {
        /// Seconds until the next announce, as the tracker wants it.
        interval: Option<u32>,
        /// Seeders (the source).
        complete: Option<u64>,
        /// Leechers (viewers).
        incomplete: Option<u64>,
        /// A non-fatal complaint.
        warning: Option<String>,
    },
    /// Another peer's offer: answer it through the tracker.
    Offer {
        /// The offering peer.
        peer: PeerId,
        /// The offer's id, echoed back verbatim (a binary string).
        offer_id: String,
        /// Its SDP.
        sdp: String,
    },
    /// The answer to one of this peer's offers.
    Answer {
        /// The answering peer.
        peer: PeerId,
        /// Which offer (as sent, a binary string).
        offer_id: String,
        /// Its SDP.
        sdp: String,
    },
    /// The tracker refused the announce.
    Failure {
        /// Its words.
        reason: String,
    },
}

/// Why a tracker frame was not understood. The frame is dropped; the connection stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// Not a JSON object.
    #[error("tracker sent something that is not a JSON object")]
    NotJson,
    /// A field is missing or has the wrong type.
    #[error("tracker message without a valid `{0}`")]
    BadField(&'static str),
    /// For another swarm than ours.
    #[error("tracker message for another swarm")]
    WrongSwarm,
    /// An action this client does not handle (e.g. `scrape`).
    #[error("unhandled tracker action `{0}`")]
    Unhandled(String),
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, TrackerError> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or(TrackerError::BadField(key))
}

fn sdp_field(m: &Map<String, Value>, key: &'static str) -> Result<String, TrackerError> {
    m.get(key)
        .and_then(|v| v.get("sdp"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(TrackerError::BadField(key))
}

fn peer_field(m: &Map<String, Value>) -> Result<PeerId, TrackerError> {
    binstr::decode_id(str_field(m, "peer_id")?)
        .map(PeerId)
        .ok_or(TrackerError::BadField("peer_id"))
}

/// Parses one text frame from the tracker of swarm `info_hash`.
pub fn parse(text: &str, info_hash: [u8; 20]) -> Result<TrackerMessage, TrackerError> {
    let v: Value = serde_json::from_str(text).map_err(|_| TrackerError::NotJson)?;
    let m = v.as_object().ok_or(TrackerError::NotJson)?;
    if let Some(reason) = m.get("failure reason") {
        return Ok(TrackerMessage::Failure {
            reason: reason.as_str().unwrap_or("unknown").to_owned(),
        });
    }
    match m.get("action").and_then(Value::as_str) {
        Some("announce") | None => {}
        Some(other) => return Err(TrackerError::Unhandled(other.to_owned())),
    }
    if let Some(h) = m.get("info_hash").and_then(Value::as_str) {
        if binstr::decode_id(h) != Some(info_hash) {
            return Err(TrackerError::WrongSwarm);
        }
    }
    if m.contains_key("offer") {
        return Ok(TrackerMessage::Offer {
            peer: peer_field(m)?,
            offer_id: str_field(m, "offer_id")?.to_owned(),
            sdp: sdp_field(m, "offer")?,
        });
    }
    if m.contains_key("answer") {
        return Ok(TrackerMessage::Answer {
            peer: peer_field(m)?,
            offer_id: str_field(m, "offer_id")?.to_owned(),
            sdp: sdp_field(m, "answer")?,
        });
    }
    let num = |k: &str| m.get(k).and_then(Value::as_u64);
    Ok(TrackerMessage::Response {
        interval: num("interval").map(|i| i.min(u32::MAX as u64) as u32),
        complete: num("complete"),
        incomplete: num("incomplete"),
        warning: m
            .get("warning message")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Delay before reconnection attempt `attempt` (0-based) to a tracker, in ms: exponential from
/// 1 s, capped at 60 s, spread by `jitter` in `[0, 1)` so a restarted tracker is not hit by every
/// viewer in the same instant.
pub fn reconnect_delay_ms(attempt: u32, jitter: f64) -> f64 {
    let base = (1000.0 * 2f64.powi(attempt.min(16) as i32)).min(60_000.0);
    base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// SDP relayed through neighbours (the core's [`crate::core::Output::Signal`] payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalPayload {
    /// An offer to connect.
    Offer(String),
    /// The answer to an offer.
    Answer(String),
}

impl SignalPayload {
    /// `{"type":"offer"|"answer","sdp":...}`, the shape of an `RTCSessionDescriptionInit`.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, sdp) = match self {
            SignalPayload::Offer(s) => ("offer", s),
            SignalPayload::Answer(s) => ("answer", s),
        };
        json!({ "type": kind, "sdp": sdp }).to_string().into_bytes()
    }

    /// Parses a payload a neighbour relayed; `None` when it is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<SignalPayload> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let sdp = v.get("sdp")?.as_str()?.to_owned();
        match v.get("type")?.as_str()? {
            "offer" => Some(SignalPayload::Offer(sdp)),
            "answer" => Some(SignalPayload::Answer(sdp)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 20] = [0xab; 20];

    #[test]
    fn announce_has_the_fields_trackers_expect() {
        let offers = [OfferOut {
            offer_id: [0xff; 20],
            sdp: "v=0\r\n".into(),
        }];
        let text = Announce {
            info_hash: HASH,
            peer_id: PeerId([1; 20]),
            numwant: 3,
            event: AnnounceEvent::Started,
            offers: offers.to_vec(),
            uploaded: 5,
            downloaded: 6,
            seeder: false,
        }
        .to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["action"], "announce");
        assert_eq!(v["event"], "started");
        assert_eq!(v["numwant"], 3);
        assert_eq!(v["left"], 1);
        assert_eq!(
            binstr::decode_id(v["info_hash"].as_str().unwrap()),
            Some(HASH)
        );
        assert_eq!(v["peer_id"].as_str().unwrap().chars().count(), 20);
        assert_eq!(v["offers"][0]["offer"]["type"], "offer");
        assert_eq!(v["offers"][0]["offer"]["sdp"], "v=0\r\n");
        assert_eq!(
            binstr::decode_id(v["offers"][0]["offer_id"].as_str().unwrap()),
            Some([0xff; 20])
        );
    }

    #[test]
    fn update_announces_carry_no_event_and_no_empty_offers() {
        let text = Announce {
            info_hash: HASH,
            peer_id: PeerId([1; 20]),
            numwant: 0,
            event: AnnounceEvent::Update,
            offers: Vec::new(),
            uploaded: 0,
            downloaded: 0,
            seeder: true,
        }
        .to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v.get("event").is_none());
        assert!(v.get("offers").is_none());
        assert_eq!(v["left"], 0);
    }

    #[test]
    fn answers_address_the_offerer() {
        let text = answer_json(HASH, PeerId([1; 20]), PeerId([2; 20]), "oid", "sdp");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            binstr::decode_id(v["to_peer_id"].as_str().unwrap()),
            Some([2; 20])
        );
        assert_eq!(v["answer"]["type"], "answer");
        assert_eq!(v["offer_id"], "oid");
    }

    fn frame(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn offers_answers_and_responses_parse() {
        let hash = binstr::encode(&HASH);
        let peer = binstr::encode(&[7; 20]);
        let offer = frame(json!({"action":"announce","info_hash":hash,"peer_id":peer,
            "offer_id":"o1","offer":{"type":"offer","sdp":"S"}}));
        assert_eq!(
            parse(&offer, HASH),
            Ok(TrackerMessage::Offer {
                peer: PeerId([7; 20]),
                offer_id: "o1".into(),
                sdp: "S".into()
            })
        );
        let answer = frame(json!({"action":"announce","info_hash":hash,"peer_id":peer,
            "offer_id":"o2","answer":{"type":"answer","sdp":"A"}}));
        assert!(
            matches!(parse(&answer, HASH), Ok(TrackerMessage::Answer { sdp, .. }) if sdp == "A")
        );
        let resp = frame(json!({"action":"announce","info_hash":hash,"interval":120,
            "complete":1,"incomplete":4,"warning message":"slow down"}));
        assert_eq!(
            parse(&resp, HASH),
            Ok(TrackerMessage::Response {
                interval: Some(120),
                complete: Some(1),
                incomplete: Some(4),
                warning: Some("slow down".into())
            })
        );
        let fail = frame(json!({"failure reason":"invalid info_hash"}));
        assert_eq!(
            parse(&fail, HASH),
            Ok(TrackerMessage::Failure {
                reason: "invalid info_hash".into()
            })
        );
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(parse("nope", HASH), Err(TrackerError::NotJson));
        assert_eq!(parse("[1]", HASH), Err(TrackerError::NotJson));
        let other =
            frame(json!({"action":"announce","info_hash":binstr::encode(&[1;20]),"interval":5}));
        assert_eq!(parse(&other, HASH), Err(TrackerError::WrongSwarm));
        let bad_peer = frame(json!({"action":"announce","peer_id":"short","offer_id":"o",
            "offer":{"type":"offer","sdp":"S"}}));
        assert_eq!(
            parse(&bad_peer, HASH),
            Err(TrackerError::BadField("peer_id"))
        );
        let no_sdp = frame(
            json!({"action":"announce","peer_id":binstr::encode(&[7;20]),
            "offer_id":"o","offer":{"type":"offer"}}),
        );
        assert_eq!(parse(&no_sdp, HASH), Err(TrackerError::BadField("offer")));
        assert!(matches!(
            parse(r#"{"action":"scrape"}"#, HASH),
            Err(TrackerError::Unhandled(_))
        ));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(reconnect_delay_ms(0, 0.5), 1000.0);
        assert_eq!(reconnect_delay_ms(3, 0.5), 8000.0);
        assert_eq!(reconnect_delay_ms(30, 0.5), 60_000.0);
        assert_eq!(reconnect_delay_ms(0, 0.0), 750.0);
        assert_eq!(reconnect_delay_ms(0, 1.0), 1250.0);
    }

    #[test]
    fn signal_payloads_round_trip_and_reject_junk() {
        for p in [
            SignalPayload::Offer("v=0\r\na=x".into()),
            SignalPayload::Answer(String::new()),
        ] {
            assert_eq!(SignalPayload::decode(&p.encode()), Some(p));
        }
        assert_eq!(SignalPayload::decode(b"\xff"), None);
        assert_eq!(
            SignalPayload::decode(br#"{"type":"pranswer","sdp":""}"#),
            None
        );
    }
}
