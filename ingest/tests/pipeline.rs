//! The pipeline on FLV files ffmpeg writes (the same tags RTMP carries): a resolution change
//! with timestamps restarting at 0 (an encoder restart in OBS), audio-only and video-only
//! streams. Each init segment with the segments after it must decode with every frame.
//!
//! Needs `ffmpeg` and `ffprobe` on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use swarmcast::media::parse::parse_init_segment;
use swarmcast_ingest::pipeline::{Output, Pipeline};

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pipeline_{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .expect("run ffmpeg/ffprobe (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// ffmpeg writes an FLV file: `size` testsrc2 (x264 -bf 2) and/or AAC, `seconds` long.
fn flv(path: &Path, size: Option<&str>, audio: bool, seconds: u32) -> Vec<u8> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-nostdin"]);
    if let Some(size) = size {
        cmd.args(["-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=30"));
    }
    if audio {
        cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    }
    cmd.args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30",
        ])
        .args(["-c:a", "aac", "-ac", "1"])
        .args(["-f", "flv"])
        .arg(path);
    run(&mut cmd);
    std::fs::read(path).unwrap()
}

/// The (type, timestamp ms, body) of each audio (8) and video (9) tag of an FLV file.
fn tags(file: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    assert_eq!(&file[..3], b"FLV");
    let mut pos = u32::from_be_bytes([file[5], file[6], file[7], file[8]]) as usize + 4;
    let mut out = Vec::new();
    while pos + 11 <= file.len() {
        let kind = file[pos];
        let size = u32::from_be_bytes([0, file[pos + 1], file[pos + 2], file[pos + 3]]) as usize;
        let ts = u32::from_be_bytes([file[pos + 7], file[pos + 4], file[pos + 5], file[pos + 6]]);
        let body = file[pos + 11..pos + 11 + size].to_vec();
        if kind == 8 || kind == 9 {
            out.push((kind, ts, body));
        }
        pos += 11 + size + 4;
    }
    out
}

fn feed(p: &mut Pipeline, tags: &[(u8, u32, Vec<u8>)], outputs: &mut Vec<Output>) {
    for (kind, ts, body) in tags {
        if *kind == 9 {
            p.push_video(*ts, body, Instant::now()).expect("video tag");
        } else {
            p.push_audio(*ts, body).expect("audio tag");
        }
        while let Some(o) = p.poll(Instant::now()) {
            outputs.push(o);
        }
    }
}

/// Splits the outputs at each init segment: (init, segments after it) per configuration.
fn groups(outputs: &[Output]) -> Vec<(Vec<u8>, String, Vec<u8>)> {
    let mut g: Vec<(Vec<u8>, String, Vec<u8>)> = Vec::new();
    for o in outputs {
        match o {
            Output::Init { data, mime, .. } => g.push((data.clone(), mime.clone(), Vec::new())),
            Output::Segment(s) => g.last_mut().expect("init first").2.extend(&s.data),
        }
    }
    g
}

/// ffprobe of init + segments: (codec names, frames per stream); and a clean full decode.
fn probe(path: &Path, init: &[u8], segments: &[u8]) -> (Vec<String>, Vec<usize>) {
    let mut file = init.to_vec();
    file.extend_from_slice(segments);
    std::fs::write(path, &file).unwrap();
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_frames",
            "-of",
            "json",
        ])
        .arg(path));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"].as_array().unwrap();
    let codecs = streams
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap().to_owned())
        .collect();
    let frames = v["frames"].as_array().unwrap();
    let counts = (0..streams.len() as u64)
        .map(|i| {
            frames
                .iter()
                .filter(|f| f["stream_index"].as_u64() == Some(i))
                .count()
        })
        .collect();
    let decode = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"]));
    assert!(
        decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
    (codecs, counts)
}

#[test]
fn resolution_change_and_timestamp_restart_give_a_new_init_segment() {
    let d = dir("restart");
    let a = tags(&flv(&d.join("a.flv"), Some("320x240"), true, 2));
    let b = tags(&flv(&d.join("b.flv"), Some("640x360"), true, 1));
    let mut p = Pipeline::new();
    let mut outputs = Vec::new();
    feed(&mut p, &a, &mut outputs);
    feed(&mut p, &b, &mut outputs);
    p.finish();
    while let Some(o) = p.poll(Instant::now()) {
        outputs.push(o);
    }
    let stats = p.stats();
    assert_eq!(stats.video_frames, 90, "{stats:?}");
    assert_eq!(stats.init_segments, 2);
    assert!(stats.rebases >= 2, "both tracks restart at 0: {stats:?}");

    let g = groups(&outputs);
    assert_eq!(g.len(), 2);
    for (i, ((init, mime, segments), (w, h, frames))) in
        g.iter().zip([(320, 240, 60), (640, 360, 30)]).enumerate()
    {
        let info = parse_init_segment(init).unwrap();
        assert_eq!((info.tracks[0].width, info.tracks[0].height), (w, h));
        assert!(mime.ends_with(",mp4a.40.2\""), "{mime}");
        let (codecs, counts) = probe(&d.join(format!("out{i}.mp4")), init, segments);
        assert_eq!(codecs, ["h264", "aac"]);
        assert_eq!(counts[0], frames, "every video frame of part {i} decodes");
        assert!(counts[1] > 0);
    }
}

#[test]
fn audio_only_and_video_only_streams() {
    let d = dir("single");
    for (name, size, audio) in [("audio", None, true), ("video", Some("320x240"), false)] {
        // Timestamps starting anywhere: an hour in, as after a long-running OBS session.
        let t: Vec<_> = tags(&flv(&d.join(format!("{name}.flv")), size, audio, 2))
            .into_iter()
            .map(|(kind, ts, body)| (kind, ts + 3_600_000, body))
            .collect();
        let mut p = Pipeline::new();
        let mut outputs = Vec::new();
        feed(&mut p, &t, &mut outputs);
        p.finish();
        while let Some(o) = p.poll(Instant::now()) {
            outputs.push(o);
        }
        let first = outputs.iter().find_map(|o| match o {
            Output::Segment(s) => Some(s.pts_us),
            _ => None,
        });
        assert_eq!(first, Some(0), "the output timeline starts at 0");
        let g = groups(&outputs);
        assert_eq!(g.len(), 1);
        let (init, mime, segments) = &g[0];
        let (codecs, counts) = probe(&d.join(format!("{name}.mp4")), init, segments);
        let stats = p.stats();
        if audio {
            assert_eq!(mime, "audio/mp4; codecs=\"mp4a.40.2\"");
            assert_eq!(codecs, ["aac"]);
            assert_eq!(
                counts[0] as u64, stats.audio_frames,
                "every AAC frame decodes"
            );
            assert!(stats.audio_frames >= 2 * 44_100 / 1024 - 2, "{stats:?}");
        } else {
            assert!(mime.starts_with("video/mp4; codecs=\"avc1."), "{mime}");
            assert!(!mime.contains(','), "{mime}");
            assert_eq!(codecs, ["h264"]);
            assert_eq!(counts[0], 60, "every video frame decodes");
        }
    }
}
