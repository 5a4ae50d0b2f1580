//! `swarmcast-ingest --listen 127.0.0.1:1935 --stream-key KEY [--out DIR]`: accepts an RTMP
//! publish from OBS or ffmpeg at `rtmp://HOST:PORT/live/KEY` and packages it into fMP4.

use std::path::PathBuf;
use std::process::ExitCode;

use swarmcast_ingest::server::{serve, Config, Event, Sink};

const USAGE: &str = "usage: swarmcast-ingest --listen ADDR:PORT --stream-key KEY [--out DIR]";

fn parse_args() -> Result<(String, Config), String> {
    let mut listen = None;
    let mut key = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?),
            "--stream-key" => key = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let stream_key = key.ok_or(format!("--stream-key is required\n{USAGE}"))?;
    if stream_key.is_empty() {
        return Err("--stream-key must not be empty".to_owned());
    }
    let sink = match out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            Sink::Dir(dir)
        }
        None => Sink::Discard,
    };
    let config = Config {
        app: "live".to_owned(),
        stream_key,
        sink,
    };
    Ok((
        listen.unwrap_or_else(|| "127.0.0.1:1935".to_owned()),
        config,
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (listen, config) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("swarmcast-ingest: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "swarmcast-ingest: listening on rtmp://{listen}/{}/<key>. NOTE: not yet a swarm source \
         (the native WebRTC transport does not exist yet); segments are {}",
        config.app,
        match &config.sink {
            Sink::Dir(d) => format!("written to {} for inspection", d.display()),
            Sink::Discard => "discarded (give --out DIR to keep them)".to_owned(),
        }
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            log(&event);
        }
    });
    match serve(listener, config, tx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmcast-ingest: accept failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(event: &Event) {
    match event {
        Event::Publishing { peer } => eprintln!("swarmcast-ingest: {peer}: publishing"),
        Event::Init { peer, mime } => eprintln!("swarmcast-ingest: {peer}: init segment, {mime}"),
        Event::Refused { peer, reason } => eprintln!("swarmcast-ingest: {peer}: refused: {reason}"),
        Event::Disconnected { peer, reason } => {
            eprintln!("swarmcast-ingest: {peer}: disconnected: {reason}")
        }
        Event::Finished {
            peer,
            stats,
            latencies_us,
        } => {
            let mut l = latencies_us.clone();
            l.sort_unstable();
            let pct = |p: usize| {
                l.get((l.len().saturating_sub(1)) * p / 100)
                    .copied()
                    .unwrap_or(0)
            };
            eprintln!(
                "swarmcast-ingest: {peer}: finished: {} video + {} audio frames ({} dropped, {} \
                 timestamp jumps absorbed), {} init + {} media segments; tag-to-segment latency \
                 ms: min {:.1}, median {:.1}, p95 {:.1}, max {:.1} over {} video frames",
                stats.video_frames,
                stats.audio_frames,
                stats.dropped_frames,
                stats.rebases,
                stats.init_segments,
                stats.segments,
                pct(0) as f64 / 1000.0,
                pct(50) as f64 / 1000.0,
                pct(95) as f64 / 1000.0,
                pct(100) as f64 / 1000.0,
                l.len()
            );
        }
    }
}
