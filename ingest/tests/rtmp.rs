//! The ingest against a real RTMP client: ffmpeg publishes testsrc2 as x264 with B-frames and
//! AAC, and ffprobe must read H.264 + AAC with every frame back from init + segments; wrong keys
//! and second publishers are refused; garbage is a clean disconnect.
//!
//! Needs `ffmpeg` and `ffprobe` on PATH (fails, does not skip, without them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use swarmcast::media::parse::parse_init_segment;
use swarmcast_ingest::server::{serve, Config, Event, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

const KEY: &str = "s3cret";

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ingest_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

async fn start(sink: Sink) -> (u16, UnboundedReceiver<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let config = Config {
        app: "live".into(),
        stream_key: KEY.into(),
        sink,
    };
    tokio::spawn(serve(listener, config, tx));
    (port, rx)
}

/// ffmpeg publishing `seconds` of testsrc2 (x264 -bf 2 -g 30) + a sine (AAC) to `url`.
fn ffmpeg_push(url: &str, seconds: u32, realtime: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    if realtime {
        cmd.arg("-re");
    }
    cmd.args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30",
        ])
        .args(["-c:a", "aac", "-ac", "2", "-b:a", "96k"])
        .args(["-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn next_event(rx: &mut UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an event within 30 s")
        .expect("server alive")
}

/// Skips `Init` events.
async fn next_non_init(rx: &mut UnboundedReceiver<Event>) -> Event {
    loop {
        match next_event(rx).await {
            Event::Init { .. } => continue,
            e => return e,
        }
    }
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .or_else(|| v[key].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publish_becomes_h264_and_aac_segments_with_every_frame() {
    let dir = out_dir("publish");
    let (port, mut rx) = start(Sink::Dir(dir.clone())).await;
    let out = ffmpeg_push(&format!("rtmp://127.0.0.1:{port}/live/{KEY}"), 3, false)
        .output()
        .await
        .expect("run ffmpeg (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(matches!(
        next_event(&mut rx).await,
        Event::Publishing { .. }
    ));
    let mime = match next_event(&mut rx).await {
        Event::Init { mime, .. } => mime,
        e => panic!("expected the init segment, got {e:?}"),
    };
    assert!(mime.starts_with("video/mp4; codecs=\"avc1.64"), "{mime}");
    assert!(mime.ends_with(",mp4a.40.2\""), "{mime}");
    let (stats, latencies) = match next_non_init(&mut rx).await {
        Event::Finished {
            stats,
            latencies_us,
            ..
        } => (stats, latencies_us),
        e => panic!("expected the end of the stream, got {e:?}"),
    };
    assert_eq!(stats.video_frames, 90, "{stats:?}");
    assert_eq!(stats.init_segments, 1);
    assert_eq!(
        latencies.len(),
        90,
        "every video frame ends up in a segment"
    );

    // init.mp4 + 000001.m4s ... concatenated, as a viewer appends them.
    let init = std::fs::read(dir.join("init.mp4")).expect("init.mp4");
    let info = parse_init_segment(&init).expect("our init segment parses");
    assert_eq!((info.tracks[0].width, info.tracks[0].height), (320, 240));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".m4s"))
        .collect();
    names.sort();
    assert_eq!(names.len() as u64, stats.segments);
    assert!(stats.segments >= 10, "~200 ms segments of 3 s: {stats:?}");
    let mut file = init;
    for n in &names {
        file.extend(std::fs::read(dir.join(n)).unwrap());
    }
    let joined = dir.join("joined.mp4");
    std::fs::write(&joined, &file).unwrap();

    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_frames",
            "-of",
            "json",
        ])
        .arg(&joined)
        .output()
        .expect("run ffprobe");
    assert!(probe.status.success());
    let probe: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let streams = probe["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"], 320);
    assert_eq!(streams[1]["codec_name"], "aac");
    assert_eq!(streams[1]["channels"], 2);
    let frames = probe["frames"].as_array().unwrap();
    let pts = |stream: u64| -> Vec<i64> {
        frames
            .iter()
            .filter(|f| f["stream_index"].as_u64() == Some(stream))
            .map(|f| int(f, "pts"))
            .collect()
    };
    let video = pts(0);
    assert_eq!(video.len(), 90, "every video frame decodes");
    assert!(
        video.windows(2).all(|w| w[0] < w[1]),
        "presentation order strictly increasing: {video:?}"
    );
    let audio = pts(1).len() as u64;
    // Audio from before the first keyframe is dropped by the segmenter (at most a frame or two).
    assert!(
        audio <= stats.audio_frames && audio + 3 >= stats.audio_frames,
        "{audio} AAC frames decoded of {} received",
        stats.audio_frames
    );
    assert!(audio >= 3 * 48_000 / 1024 - 3, "3 s of AAC: {audio} frames");

    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&joined)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(decode.status.success());
    assert!(
        decode.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&decode.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_second_publisher_are_refused() {
    let (port, mut rx) = start(Sink::Discard).await;
    let wrong = ffmpeg_push(&format!("rtmp://127.0.0.1:{port}/live/nope"), 1, false)
        .output()
        .await
        .expect("run ffmpeg");
    assert!(!wrong.status.success(), "ffmpeg must fail on a wrong key");
    match next_event(&mut rx).await {
        Event::Refused { reason, .. } => assert!(reason.contains("wrong stream key"), "{reason}"),
        e => panic!("expected a refusal, got {e:?}"),
    }

    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    let mut first = ffmpeg_push(&url, 4, true).spawn().expect("run ffmpeg");
    assert!(matches!(
        next_event(&mut rx).await,
        Event::Publishing { .. }
    ));
    let second = ffmpeg_push(&url, 1, false)
        .output()
        .await
        .expect("run ffmpeg");
    assert!(!second.status.success(), "the second publisher must fail");
    match next_non_init(&mut rx).await {
        Event::Refused { reason, .. } => assert!(reason.contains("already streaming"), "{reason}"),
        e => panic!("expected a refusal, got {e:?}"),
    }
    assert!(
        first.wait().await.unwrap().success(),
        "the first publisher is unaffected"
    );
    assert!(matches!(
        next_non_init(&mut rx).await,
        Event::Finished { .. }
    ));
}

/// Reads until the server closes the connection; panics if it does not within 10 s.
async fn expect_closed(sock: &mut TcpStream) {
    let mut buf = [0u8; 8192];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_clean_disconnect() {
    let (port, mut rx) = start(Sink::Discard).await;

    // Garbage instead of a handshake.
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    sock.write_all(&garbage(4096, 1)).await.unwrap();
    expect_closed(&mut sock).await;
    match next_event(&mut rx).await {
        Event::Disconnected { reason, .. } => assert!(reason.contains("handshake"), "{reason}"),
        e => panic!("expected a disconnect, got {e:?}"),
    }

    // A real handshake, then garbage chunks.
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hs = rml_rtmp::handshake::Handshake::new(rml_rtmp::handshake::PeerType::Client);
    sock.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during a valid handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            rml_rtmp::handshake::HandshakeProcessResult::InProgress { response_bytes } => {
                sock.write_all(&response_bytes).await.unwrap();
            }
            rml_rtmp::handshake::HandshakeProcessResult::Completed { response_bytes, .. } => {
                sock.write_all(&response_bytes).await.unwrap();
                break;
            }
        }
    }
    // Chunk stream id 2 (protocol control), type-0 header, a 1 MiB "SetChunkSize" message
    // followed by garbage: nonsense any parser must reject rather than buffer forever.
    let mut bad = vec![0x02, 0, 0, 0, 0x10, 0, 0, 0x01, 0, 0, 0, 0];
    bad.extend(garbage(70_000, 7));
    let _ = sock.write_all(&bad).await;
    expect_closed(&mut sock).await;
    match next_event(&mut rx).await {
        Event::Disconnected { reason, .. } => {
            assert!(reason.contains("malformed"), "{reason}")
        }
        e => panic!("expected a disconnect, got {e:?}"),
    }

    // The server still takes connections.
    let sock = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(sock.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_codec_disconnects_naming_the_obs_setting() {
    let (port, mut rx) = start(Sink::Discard).await;
    // MP3 audio (what OBS never sends with AAC selected, but ffmpeg's FLV default for some
    // inputs); the outcome for ffmpeg itself depends on how far it got, so only the server's
    // account is checked.
    let _ = tokio::process::Command::new("ffmpeg")
        .args([
            "-v", "error", "-nostdin", "-f", "lavfi", "-i", "sine", "-t", "1",
        ])
        .args(["-c:a", "libmp3lame", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/{KEY}"))
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run ffmpeg");
    assert!(matches!(
        next_event(&mut rx).await,
        Event::Publishing { .. }
    ));
    match next_non_init(&mut rx).await {
        Event::Disconnected { reason, .. } => {
            assert!(reason.contains("MP3"), "{reason}");
            assert!(reason.contains("Audio Encoder to AAC"), "{reason}");
        }
        e => panic!("expected a disconnect, got {e:?}"),
    }
    match next_non_init(&mut rx).await {
        Event::Finished { stats, .. } => assert_eq!(stats.segments, 0),
        e => panic!("expected the end of the publish, got {e:?}"),
    }
}
