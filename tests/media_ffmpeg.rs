//! Round trip through real encoders and a real demuxer: ffmpeg encodes H.264 (libx264, keyframe
//! every 15 frames) and Opus into an MP4, our parser demuxes it into WebCodecs-like frames (avcC,
//! length-prefixed NAL units, µs timestamps), the segmenter packages them, and ffprobe/ffmpeg must
//! read back every frame with the right timestamps and keyframes and decode without errors.
//!
//! These tests need `ffmpeg` and `ffprobe` on PATH and fail (they do not skip) without them:
//! `cargo xtask setup` / CI install them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use swarmcast::media::parse::{parse_init_segment, parse_media_segment, InitSegment};
use swarmcast::media::{
    AudioCodec, AudioTrackConfig, EncodedFrame, Fmp4Muxer, MediaSegment, Segmenter,
    VideoTrackConfig,
};

const FPS: u64 = 30;
const GOP: usize = 15;
const SECONDS: u64 = 3;

fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("media_ffmpeg_{name}"));
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}. These tests need ffmpeg and ffprobe (apt-get install ffmpeg, \
             or `cargo xtask setup`)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Encodes the test input with ffmpeg: baseline H.264 (no B-frames, as WebCodecs produces) at
/// 30 fps with a keyframe every 15 frames, and stereo Opus at 48 kHz.
fn encode_input(dir: &Path, with_audio: bool) -> PathBuf {
    let path = dir.join("input.mp4");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=320x240:rate={FPS}"));
    if with_audio {
        cmd.args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-ac",
            "2",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
        ]);
    }
    cmd.args(["-t", &SECONDS.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-preset",
            "veryfast",
        ])
        .args(["-g", &GOP.to_string(), "-keyint_min", &GOP.to_string()])
        .args(["-sc_threshold", "0", "-bf", "0"])
        .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof"])
        .arg(&path);
    run(&mut cmd);
    path
}

/// The input's frames as WebCodecs would hand them out.
struct Input {
    init: InitSegment,
    video: Vec<EncodedFrame>,
    audio: Vec<EncodedFrame>,
}

fn demux(path: &Path) -> Input {
    let bytes = std::fs::read(path).expect("read input");
    let init = parse_init_segment(&bytes).expect("input init segment parses");
    let fragments = parse_media_segment(&bytes, Some(&init)).expect("input fragments parse");
    let mut video = Vec::new();
    let mut audio = Vec::new();
    for fragment in &fragments {
        for tf in &fragment.tracks {
            let track = init.track(tf.track_id).expect("fragment of a known track");
            let us =
                |ticks: u64| (u128::from(ticks) * 1_000_000 / u128::from(track.timescale)) as u64;
            for s in &tf.samples {
                assert_eq!(s.composition_offset, 0, "baseline input has no reordering");
                let frame = EncodedFrame {
                    data: bytes[s.range()].to_vec(),
                    timestamp_us: us(s.decode_time),
                    duration_us: (us(s.decode_time + u64::from(s.duration)) - us(s.decode_time))
                        as u32,
                    keyframe: s.is_sync(),
                };
                match &track.handler.0 {
                    b"vide" => video.push(frame),
                    b"soun" => audio.push(frame),
                    other => panic!("unexpected handler {other:?}"),
                }
            }
        }
    }
    Input { init, video, audio }
}

fn configs(input: &Input) -> (VideoTrackConfig, Option<AudioTrackConfig>) {
    let v = input
        .init
        .tracks
        .iter()
        .find(|t| t.handler == b"vide")
        .expect("video track");
    let (kind, avcc) = v.config.clone().expect("avcC");
    assert_eq!(kind, b"avcC");
    let codec = format!("avc1.{:02x}{:02x}{:02x}", avcc[1], avcc[2], avcc[3]);
    let video = VideoTrackConfig {
        codec,
        width: v.width,
        height: v.height,
        avcc,
    };
    let audio = input
        .init
        .tracks
        .iter()
        .find(|t| t.handler == b"soun")
        .map(|a| {
            let (kind, dops) = a.config.clone().expect("dOps");
            assert_eq!(kind, b"dOps");
            AudioTrackConfig {
                sample_rate: u32::from_be_bytes([dops[4], dops[5], dops[6], dops[7]]),
                channels: dops[1],
                pre_skip: u16::from_be_bytes([dops[2], dops[3]]),
                codec: AudioCodec::Opus,
            }
        });
    (video, audio)
}

/// Feeds the frames in the order a browser would deliver them: each at its timestamp plus its
/// encoder's latency (video 60 ms behind, so audio runs ahead), polling after every push.
fn segment(input: &Input, muxer: Fmp4Muxer, video_durations: bool) -> (Vec<u8>, Vec<MediaSegment>) {
    let init = muxer.init_segment();
    let mut seg = Segmenter::new(muxer, 200_000);
    let mut events: Vec<(u64, bool, EncodedFrame)> = Vec::new();
    for f in &input.video {
        let mut f = f.clone();
        if !video_durations {
            f.duration_us = 0;
        }
        events.push((f.timestamp_us + 60_000, true, f));
    }
    for f in &input.audio {
        events.push((f.timestamp_us, false, f.clone()));
    }
    events.sort_by_key(|(at, is_video, _)| (*at, *is_video));
    let mut out = Vec::new();
    for (_, is_video, frame) in events {
        if is_video {
            seg.push_video(frame).expect("video frame accepted");
        } else {
            seg.push_audio(frame).expect("audio frame accepted");
        }
        while let Some(s) = seg.poll_segment() {
            out.push(s);
        }
    }
    seg.flush();
    while let Some(s) = seg.poll_segment() {
        out.push(s);
    }
    (init, out)
}

fn ffprobe(path: &Path) -> Value {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_packets",
            "-of",
            "json",
        ])
        .arg(path));
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

fn packets(probe: &Value, stream: u64) -> Vec<&Value> {
    probe["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .filter(|p| p["stream_index"].as_u64() == Some(stream))
        .collect()
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .or_else(|| v[key].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// Checks the output with ffprobe (streams, every packet's timestamp, continuity, keyframes) and
/// with a full decode, and with our own parser (segment flags against their first sample).
fn check_output(dir: &Path, input: &Input, init: &[u8], segments: &[MediaSegment]) {
    let path = dir.join("output.mp4");
    let mut file = init.to_vec();
    for s in segments {
        file.extend_from_slice(&s.data);
    }
    std::fs::write(&path, &file).expect("write output");

    let probe = ffprobe(&path);
    let streams = probe["streams"].as_array().expect("streams");
    let has_audio = !input.audio.is_empty();
    assert_eq!(streams.len(), if has_audio { 2 } else { 1 }, "{probe}");
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["width"], 320);
    assert_eq!(streams[0]["height"], 240);
    assert_eq!(streams[0]["time_base"], "1/1000000");

    let origin = input.video[0].timestamp_us;
    let video = packets(&probe, 0);
    assert_eq!(
        video.len(),
        input.video.len(),
        "every video frame is in the output"
    );
    for (i, (p, f)) in video.iter().zip(&input.video).enumerate() {
        assert_eq!(
            int(p, "pts"),
            (f.timestamp_us - origin) as i64,
            "video pts of frame {i}"
        );
        assert_eq!(int(p, "dts"), int(p, "pts"));
        let key = p["flags"].as_str().expect("flags").starts_with('K');
        assert_eq!(key, f.keyframe, "keyframe flag of frame {i}");
        assert_eq!(key, i % GOP == 0, "keyframes every {GOP} frames");
        assert_eq!(int(p, "size") as usize, f.data.len());
    }

    if has_audio {
        assert_eq!(streams[1]["codec_name"], "opus");
        assert_eq!(streams[1]["sample_rate"], "48000");
        assert_eq!(streams[1]["channels"], 2);
        let audio = packets(&probe, 1);
        let expected: Vec<&EncodedFrame> = input
            .audio
            .iter()
            .filter(|f| f.timestamp_us >= origin)
            .collect();
        assert_eq!(
            audio.len(),
            expected.len(),
            "every audio packet is in the output"
        );
        for (p, f) in audio.iter().zip(&expected) {
            let pts_us = int(p, "pts") as u64 * 1_000_000 / 48_000;
            assert!(
                pts_us.abs_diff(f.timestamp_us - origin) <= 1,
                "audio pts {pts_us} vs input {}",
                f.timestamp_us - origin
            );
            assert_eq!(int(p, "size") as usize, f.data.len());
        }
    }

    // Our own view of the segments: sequence numbers, flags, tfdt continuity; and each sample's
    // decode time (tfdt + durations before it) is the pts ffprobe reads, so the timeline has no
    // gaps or overlaps. (ffprobe's own packet `duration` is not used: its mov demuxer reports a
    // nominal duration for some samples instead of the trun's, even for ffmpeg's own files.)
    let init_info = parse_init_segment(&file).expect("our init segment parses");
    let ours = parse_media_segment(&file, Some(&init_info)).expect("output parses");
    for (track_id, stream) in [(1, 0), (2, 1)] {
        let samples: Vec<_> = ours
            .iter()
            .filter_map(|f| f.track(track_id))
            .flat_map(|t| t.samples.iter())
            .collect();
        let probed = packets(&probe, stream);
        assert_eq!(samples.len(), probed.len());
        for (s, p) in samples.iter().zip(&probed) {
            assert_eq!(s.decode_time as i64, int(p, "pts"), "track {track_id}");
        }
        for w in samples.windows(2) {
            assert_eq!(
                w[0].decode_time + u64::from(w[0].duration),
                w[1].decode_time
            );
        }
    }
    let mut video_end: Option<u64> = None;
    let mut audio_end: Option<u64> = None;
    for (n, s) in segments.iter().enumerate() {
        assert_eq!(s.seq, n as u64 + 1);
        let frags = parse_media_segment(&s.data, Some(&init_info)).expect("segment parses");
        assert_eq!(frags.len(), 1);
        assert_eq!(frags[0].sequence_number as u64, s.seq);
        let v = frags[0].track(1).expect("every segment has video");
        assert_eq!(v.base_decode_time, Some(s.pts_us));
        assert_eq!(v.samples[0].is_sync(), s.keyframe, "segment {} flag", s.seq);
        assert!(
            v.samples[1..].iter().all(|x| !x.is_sync()),
            "a keyframe starts a segment"
        );
        if let Some(end) = video_end {
            assert_eq!(v.base_decode_time, Some(end), "tfdt continuity");
        }
        video_end = Some(v.end_decode_time());
        assert_eq!(v.end_decode_time() - s.pts_us, u64::from(s.duration_us));
        if let Some(a) = frags[0].track(2) {
            if let Some(end) = audio_end {
                assert_eq!(a.base_decode_time, Some(end), "audio tfdt continuity");
            }
            audio_end = Some(a.end_decode_time());
        }
    }
    let keyframe_segments = segments.iter().filter(|s| s.keyframe).count();
    let keyframes = input.video.iter().filter(|f| f.keyframe).count();
    assert_eq!(keyframe_segments, keyframes);

    // A full decode of both streams must be clean.
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"]));
    assert!(
        out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn h264_and_opus_round_trip_through_ffprobe() {
    let dir = work_dir("av");
    let input = demux(&encode_input(&dir, true));
    assert_eq!(input.video.len() as u64, FPS * SECONDS);
    assert!(
        input.audio.len() as u64 >= SECONDS * 50 - 2,
        "{}",
        input.audio.len()
    );
    let (video, audio) = configs(&input);
    let muxer = Fmp4Muxer::new(Some(video.clone()), audio).expect("muxer");
    assert_eq!(
        muxer.mime_type(),
        format!("video/mp4; codecs=\"{},opus\"", video.codec)
    );
    let (init, segments) = segment(&input, muxer, false);
    // 200 ms target at 30 fps: 6 frames, and a cut before each keyframe (every 15 frames):
    // 6 + 6 + 3 per keyframe interval.
    assert_eq!(segments.len(), 3 * input.video.len() / GOP);
    check_output(&dir, &input, &init, &segments);
}

#[test]
fn h264_only_with_durations_round_trips_through_ffprobe() {
    let dir = work_dir("video");
    let input = demux(&encode_input(&dir, false));
    assert!(input.audio.is_empty());
    let (video, _) = configs(&input);
    let muxer = Fmp4Muxer::new(Some(video), None).expect("muxer");
    assert!(muxer.mime_type().starts_with("video/mp4; codecs=\"avc1.42"));
    let (init, segments) = segment(&input, muxer, true);
    check_output(&dir, &input, &init, &segments);
}

/// The AudioSpecificConfig inside an `esds` payload (version/flags first): the DecoderSpecificInfo
/// (tag 5) nested in the ES_Descriptor (3) and DecoderConfigDescriptor (4).
fn audio_specific_config(esds: &[u8]) -> Vec<u8> {
    let mut pos = 4; // version + flags
    loop {
        let tag = esds[pos];
        pos += 1;
        let mut len = 0usize;
        loop {
            let b = esds[pos];
            pos += 1;
            len = (len << 7) | usize::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
        match tag {
            0x03 => {
                let flags = esds[pos + 2];
                pos += 3;
                assert_eq!(flags, 0, "ES_Descriptor without optional fields");
            }
            0x04 => pos += 13,
            0x05 => return esds[pos..pos + len].to_vec(),
            other => panic!("unexpected descriptor {other:#x} in esds"),
        }
    }
}

/// x264 with B-frames (`-bf 2`, keyframe every 30 frames) and AAC-LC, what OBS sends over RTMP:
/// samples in decode order with composition offsets, and an `mp4a` track. The output must decode
/// every frame, present them in strictly increasing order at the input's presentation times
/// (shifted so the first keyframe is at 0), and carry all the AAC frames.
#[test]
fn h264_with_b_frames_and_aac_round_trip_through_ffprobe() {
    let dir = work_dir("bframes_aac");
    let input_path = dir.join("input.mp4");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=320x240:rate={FPS}"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &SECONDS.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30",
        ])
        .args(["-c:a", "aac", "-ac", "2", "-b:a", "96k"])
        .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof"])
        .arg(&input_path));
    let bytes = std::fs::read(&input_path).expect("read input");
    let init = parse_init_segment(&bytes).expect("input init segment parses");
    let fragments = parse_media_segment(&bytes, Some(&init)).expect("input fragments parse");
    let vtrack = init.tracks.iter().find(|t| t.handler == b"vide").unwrap();
    let atrack = init.tracks.iter().find(|t| t.handler == b"soun").unwrap();
    let us = |ticks: i64, timescale: u32| ticks * 1_000_000 / i64::from(timescale);

    // (frame with its decode timestamp, composition offset µs), in decode order.
    let mut video: Vec<(EncodedFrame, i64)> = Vec::new();
    let mut audio: Vec<EncodedFrame> = Vec::new();
    for tf in fragments.iter().flat_map(|f| &f.tracks) {
        for s in &tf.samples {
            let dts = us(
                s.decode_time as i64,
                if tf.track_id == vtrack.track_id {
                    vtrack.timescale
                } else {
                    atrack.timescale
                },
            );
            if tf.track_id == vtrack.track_id {
                let end = us(
                    (s.decode_time + u64::from(s.duration)) as i64,
                    vtrack.timescale,
                );
                let frame = EncodedFrame {
                    data: bytes[s.range()].to_vec(),
                    timestamp_us: dts as u64,
                    duration_us: (end - dts) as u32,
                    keyframe: s.is_sync(),
                };
                video.push((frame, us(s.composition_offset, vtrack.timescale)));
            } else {
                let end = us(
                    (s.decode_time + u64::from(s.duration)) as i64,
                    atrack.timescale,
                );
                audio.push(EncodedFrame {
                    data: bytes[s.range()].to_vec(),
                    timestamp_us: dts as u64,
                    duration_us: (end - dts) as u32,
                    keyframe: true,
                });
            }
        }
    }
    assert_eq!(video.len() as u64, FPS * SECONDS);
    let offsets: Vec<i64> = video.iter().map(|(_, o)| *o).collect();
    assert!(
        offsets.windows(2).any(|w| w[0] != w[1]),
        "the input really has B-frames (varying composition offsets): {offsets:?}"
    );

    let (kind, avcc) = vtrack.config.clone().expect("avcC");
    assert_eq!(kind, b"avcC");
    let video_config = VideoTrackConfig {
        codec: format!("avc1.{:02x}{:02x}{:02x}", avcc[1], avcc[2], avcc[3]),
        width: vtrack.width,
        height: vtrack.height,
        avcc,
    };
    let (kind, esds) = atrack.config.clone().expect("esds");
    assert_eq!(kind, b"esds");
    let audio_config = AudioTrackConfig::aac(&audio_specific_config(&esds)).expect("AAC config");
    assert_eq!(
        (audio_config.sample_rate, audio_config.channels),
        (48_000, 2)
    );
    let muxer = Fmp4Muxer::new(Some(video_config.clone()), Some(audio_config)).expect("muxer");
    assert_eq!(
        muxer.mime_type(),
        format!("video/mp4; codecs=\"{},mp4a.40.2\"", video_config.codec)
    );

    // Interleave by decode time, as an RTMP stream delivers them.
    let init_out = muxer.init_segment();
    let mut seg = Segmenter::new(muxer, 200_000);
    let mut vi = video.iter().peekable();
    let mut ai = audio.iter().peekable();
    let mut segments = Vec::new();
    loop {
        let take_video = match (vi.peek(), ai.peek()) {
            (Some((v, _)), Some(a)) => v.timestamp_us <= a.timestamp_us,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_video {
            let (f, o) = vi.next().unwrap();
            seg.push_video_reordered(f.clone(), *o)
                .expect("video frame accepted");
        } else {
            seg.push_audio(ai.next().unwrap().clone())
                .expect("audio frame accepted");
        }
        while let Some(s) = seg.poll_segment() {
            segments.push(s);
        }
    }
    seg.flush();
    while let Some(s) = seg.poll_segment() {
        segments.push(s);
    }
    assert!(segments.len() >= 10, "{} segments", segments.len());

    let path = dir.join("output.mp4");
    let mut file = init_out;
    for s in &segments {
        file.extend_from_slice(&s.data);
    }
    std::fs::write(&path, &file).expect("write output");

    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_frames",
            "-of",
            "json",
        ])
        .arg(&path));
    let probe: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let streams = probe["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{probe}");
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[1]["codec_name"], "aac");
    assert_eq!(streams[1]["sample_rate"], "48000");
    assert_eq!(streams[1]["channels"], 2);
    let frames = probe["frames"].as_array().expect("frames");
    let pts_of = |stream: u64| -> Vec<i64> {
        frames
            .iter()
            .filter(|f| f["stream_index"].as_u64() == Some(stream))
            .map(|f| int(f, "pts"))
            .collect()
    };
    let video_pts = pts_of(0);
    assert_eq!(video_pts.len(), video.len(), "every video frame decodes");
    assert!(
        video_pts.windows(2).all(|w| w[0] < w[1]),
        "presentation order strictly increasing: {video_pts:?}"
    );
    let (first, first_offset) = (&video[0].0, video[0].1);
    let first_pts = first.timestamp_us as i64 + first_offset;
    let mut expected: Vec<i64> = video
        .iter()
        .map(|(f, o)| f.timestamp_us as i64 + o - first_pts)
        .collect();
    expected.sort_unstable();
    assert_eq!(expected[0], 0, "the first keyframe presents first, at 0");
    // ffmpeg's mov demuxer shifts a track with negative composition offsets (the B-frames right
    // after the first keyframe present before their decode time) by the most negative one, so
    // its pts are ours plus a constant; the spacing must be the input's, to the µs (our ticks
    // round, the input's conversion above truncates).
    let shift = video_pts[0];
    assert!((0..=100_000).contains(&shift), "shift {shift} µs");
    for (i, (got, want)) in video_pts.iter().zip(&expected).enumerate() {
        assert!(
            (got - shift).abs_diff(*want) <= 1,
            "frame {i} presents at {} µs, input says {want} µs",
            got - shift
        );
    }
    let audio_frames = pts_of(1).len();
    let expected_audio = audio
        .iter()
        .filter(|f| f.timestamp_us >= first.timestamp_us)
        .count();
    assert_eq!(audio_frames, expected_audio, "every AAC frame decodes");

    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"]));
    assert!(
        out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
