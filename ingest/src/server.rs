//! The RTMP listener: one tokio task per connection. `rml_rtmp` does the handshake, the chunk
//! stream and the AMF0 commands; this module decides who may publish (the app must be `live`,
//! the key the configured one, one publisher per key), feeds the [`Pipeline`] and hands what it
//! produces to the [`Sink`]. Every problem with a connection ends that connection, with an
//! [`Event`] saying why; none stops the server.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;

use crate::pipeline::{Output, Pipeline, Stats};

/// A connection that sends nothing for this long is closed (a stalled or half-open client).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the produced segments go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Nowhere (tests and benchmarks that only look at the events).
    Discard,
    /// A directory: `init.mp4` (then `init-2.mp4`, ... after codec changes) and `000001.m4s`,
    /// `000002.m4s`, ... For inspection until the swarm transport exists.
    Dir(PathBuf),
}

/// What the server accepts.
#[derive(Debug, Clone)]
pub struct Config {
    /// The RTMP application, the first path segment of `rtmp://host:port/APP/KEY`.
    pub app: String,
    /// The one stream key accepted.
    pub stream_key: String,
    /// Where segments go.
    pub sink: Sink,
}

/// Something a connection did, for the log (and for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A publish was accepted.
    Publishing {
        /// The client.
        peer: SocketAddr,
    },
    /// An init segment was produced (first or after a codec change).
    Init {
        /// The client.
        peer: SocketAddr,
        /// The MSE type of the stream.
        mime: String,
    },
    /// A connect or publish was refused; the client was told why and disconnected.
    Refused {
        /// The client.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A publisher finished (or went away); the last segment is closed.
    Finished {
        /// The client.
        peer: SocketAddr,
        /// What the stream produced.
        stats: Stats,
        /// Tag-arrival-to-segment-complete times of its video frames, µs.
        latencies_us: Vec<u64>,
    },
    /// A connection was closed because of a protocol or media problem.
    Disconnected {
        /// The client.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
}

struct Shared {
    config: Config,
    publishing: Mutex<HashSet<String>>,
    events: UnboundedSender<Event>,
}

/// Holds a stream key while its publisher is connected.
struct KeyGuard<'a> {
    shared: &'a Shared,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.shared.publishing.lock() {
            set.remove(&self.key);
        }
    }
}

/// Accepts connections on `listener` forever, reporting on `events`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    events: UnboundedSender<Event>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        config,
        publishing: Mutex::new(HashSet::new()),
        events,
    });
    loop {
        let (socket, peer) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut conn = Connection {
                socket,
                peer,
                shared: &shared,
                pipeline: None,
                key: None,
            };
            let result = conn.run().await;
            let (pipeline, had_key) = (conn.pipeline.take(), conn.key.take().is_some());
            drop(conn);
            match result {
                Ok(()) | Err(End::Closed) => {}
                Err(End::Refused(reason)) => {
                    let _ = shared.events.send(Event::Refused { peer, reason });
                }
                Err(End::Failed(reason)) => {
                    let _ = shared.events.send(Event::Disconnected { peer, reason });
                }
            }
            if let (Some(mut p), true) = (pipeline, had_key) {
                // The publisher is gone, cleanly or not: close the last segment.
                p.finish();
                let _ = write_outputs(&shared, peer, &mut p);
                let latencies_us = p.latencies().iter().map(|d| d.as_micros() as u64).collect();
                let _ = shared.events.send(Event::Finished {
                    peer,
                    stats: p.stats(),
                    latencies_us,
                });
            }
        });
    }
}

/// How a connection ended, other than normally.
enum End {
    /// The client closed it.
    Closed,
    /// We refused a connect or publish (told the client).
    Refused(String),
    /// Bad input or I/O error.
    Failed(String),
}

struct Connection<'a> {
    socket: TcpStream,
    peer: SocketAddr,
    shared: &'a Shared,
    pipeline: Option<Pipeline>,
    /// The key this connection publishes, while it does.
    key: Option<KeyGuard<'a>>,
}

impl Connection<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, End> {
        match tokio::time::timeout(IDLE_TIMEOUT, self.socket.read(buf)).await {
            Err(_) => Err(End::Failed(format!(
                "nothing received for {} s",
                IDLE_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(End::Failed(format!("read error: {e}"))),
            Ok(Ok(0)) => Err(End::Closed),
            Ok(Ok(n)) => Ok(n),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.socket
            .write_all(bytes)
            .await
            .map_err(|e| End::Failed(format!("write error: {e}")))
    }

    async fn run(&mut self) -> Result<(), End> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut handshake = Handshake::new(PeerType::Server);
        let remaining = loop {
            let n = self.read(&mut buf).await?;
            let step = catch_unwind(AssertUnwindSafe(|| handshake.process_bytes(&buf[..n])));
            match step {
                Ok(Ok(HandshakeProcessResult::InProgress { response_bytes })) => {
                    self.write(&response_bytes).await?;
                }
                Ok(Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                })) => {
                    self.write(&response_bytes).await?;
                    break remaining_bytes;
                }
                Ok(Err(e)) => return Err(End::Failed(format!("bad RTMP handshake: {e}"))),
                Err(_) => return Err(End::Failed("bad RTMP handshake".into())),
            }
        };
        let (mut session, initial) = ServerSession::new(ServerSessionConfig::new())
            .map_err(|e| End::Failed(format!("RTMP session setup: {e}")))?;
        self.handle(&mut session, initial, Instant::now()).await?;
        let mut input = remaining;
        loop {
            if !input.is_empty() {
                let arrived = Instant::now();
                let results = catch_unwind(AssertUnwindSafe(|| session.handle_input(&input)))
                    .map_err(|_| End::Failed("malformed RTMP chunk stream".into()))?
                    .map_err(|e| End::Failed(format!("malformed RTMP chunk stream: {e}")))?;
                if self.handle(&mut session, results, arrived).await? {
                    return Ok(());
                }
            }
            let n = self.read(&mut buf).await?;
            input = buf[..n].to_vec();
        }
    }

    /// Acts on what the session returned; `Ok(true)` when the publisher finished.
    async fn handle(
        &mut self,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
        arrived: Instant,
    ) -> Result<bool, End> {
        let mut queue = std::collections::VecDeque::from(results);
        let mut finished = false;
        while let Some(result) = queue.pop_front() {
            let event = match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.write(&packet.bytes).await?;
                    continue;
                }
                ServerSessionResult::RaisedEvent(event) => event,
                ServerSessionResult::UnhandleableMessageReceived(_) => continue,
            };
            match event {
                ServerSessionEvent::ConnectionRequested {
                    request_id,
                    app_name,
                } => {
                    if app_name != self.shared.config.app {
                        let reason = format!(
                            "unknown application {app_name:?}: publish to rtmp://HOST:PORT/{}/KEY",
                            self.shared.config.app
                        );
                        return self.refuse(session, request_id, &reason).await;
                    }
                    queue.extend(self.accept(session, request_id)?);
                }
                ServerSessionEvent::PublishStreamRequested {
                    request_id,
                    stream_key,
                    ..
                } => {
                    if stream_key != self.shared.config.stream_key {
                        let reason = "wrong stream key: check OBS Settings > Stream > Stream Key";
                        return self.refuse(session, request_id, reason).await;
                    }
                    let fresh = self
                        .shared
                        .publishing
                        .lock()
                        .map(|mut set| set.insert(stream_key.clone()))
                        .unwrap_or(false);
                    if !fresh || self.key.is_some() {
                        let reason = "another publisher is already streaming with this key";
                        return self.refuse(session, request_id, reason).await;
                    }
                    self.key = Some(KeyGuard {
                        shared: self.shared,
                        key: stream_key,
                    });
                    self.pipeline = Some(Pipeline::new());
                    queue.extend(self.accept(session, request_id)?);
                    let _ = self
                        .shared
                        .events
                        .send(Event::Publishing { peer: self.peer });
                }
                ServerSessionEvent::VideoDataReceived {
                    data, timestamp, ..
                } => {
                    if let Some(p) = self.pipeline.as_mut() {
                        p.push_video(timestamp.value, &data, arrived)
                            .map_err(|e| End::Failed(e.to_string()))?;
                    }
                }
                ServerSessionEvent::AudioDataReceived {
                    data, timestamp, ..
                } => {
                    if let Some(p) = self.pipeline.as_mut() {
                        p.push_audio(timestamp.value, &data)
                            .map_err(|e| End::Failed(e.to_string()))?;
                    }
                }
                ServerSessionEvent::PublishStreamFinished { .. } => finished = true,
                _ => {}
            }
        }
        if let Some(p) = self.pipeline.as_mut() {
            write_outputs(self.shared, self.peer, p).map_err(End::Failed)?;
        }
        Ok(finished)
    }

    fn accept(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
    ) -> Result<Vec<ServerSessionResult>, End> {
        session
            .accept_request(request_id)
            .map_err(|e| End::Failed(format!("RTMP session: {e}")))
    }

    async fn refuse(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
        reason: &str,
    ) -> Result<bool, End> {
        if let Ok(results) = session.reject_request(request_id, "NetStream.Publish.BadName", reason)
        {
            for r in results {
                if let ServerSessionResult::OutboundResponse(packet) = r {
                    let _ = self.write(&packet.bytes).await;
                }
            }
        }
        let _ = self.socket.shutdown().await;
        Err(End::Refused(reason.to_owned()))
    }
}

/// Drains the pipeline into the sink.
fn write_outputs(shared: &Shared, peer: SocketAddr, p: &mut Pipeline) -> Result<(), String> {
    while let Some(out) = p.poll(Instant::now()) {
        if let Output::Init { mime, .. } = &out {
            let _ = shared.events.send(Event::Init {
                peer,
                mime: mime.clone(),
            });
        }
        let Sink::Dir(dir) = &shared.config.sink else {
            continue;
        };
        let (name, data) = match &out {
            Output::Init { index: 1, data, .. } => ("init.mp4".to_owned(), data),
            Output::Init { index, data, .. } => (format!("init-{index}.mp4"), data),
            Output::Segment(s) => (format!("{:06}.m4s", s.seq), &s.data),
        };
        std::fs::write(dir.join(&name), data)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(&name).display()))?;
    }
    Ok(())
}
