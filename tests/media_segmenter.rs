//! Segmenter and muxer behaviour without ffmpeg: box layout, segment boundaries, timestamp
//! continuity, audio placement and the error cases. Frames are synthetic (valid framing, dummy
//! payloads); tests/media_ffmpeg.rs covers real encoder output.

use proptest::prelude::*;
use swarmcast::media::parse::{
    boxes, parse_init_segment, parse_media_segment, Fragment, InitSegment, ParseError,
};
use swarmcast::media::{
    AudioTrackConfig, EncodedFrame, Fmp4Muxer, MediaError, MediaSegment, Segmenter, TrackKind,
    VideoTrackConfig,
};

const SPS: &[u8] = &[0x67, 0x42, 0x00, 0x1f, 0xe9, 0x02, 0xc1, 0x2c, 0x80];
const PPS: &[u8] = &[0x68, 0xce, 0x06, 0xe2];

fn avcc() -> Vec<u8> {
    let mut v = vec![1, 0x42, 0x00, 0x1f, 0xff, 0xe1];
    v.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
    v.extend_from_slice(SPS);
    v.push(1);
    v.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
    v.extend_from_slice(PPS);
    v
}

fn video_config() -> VideoTrackConfig {
    VideoTrackConfig {
        codec: "avc1.42001f".into(),
        width: 640,
        height: 360,
        avcc: avcc(),
    }
}

/// A length-prefixed IDR or non-IDR slice whose payload encodes `tag` (to find it again).
fn nal_frame(tag: u32, keyframe: bool, len: usize) -> Vec<u8> {
    let mut nal = vec![if keyframe { 0x65 } else { 0x41 }];
    nal.extend_from_slice(&tag.to_be_bytes());
    nal.resize(len.max(5), 0xab);
    let mut out = (nal.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&nal);
    out
}

fn video(tag: u32, ts: u64, dur: u32, keyframe: bool) -> EncodedFrame {
    EncodedFrame {
        data: nal_frame(tag, keyframe, 20 + tag as usize % 50),
        timestamp_us: ts,
        duration_us: dur,
        keyframe,
    }
}

fn audio(tag: u32, ts: u64) -> EncodedFrame {
    let mut data = vec![0xfc];
    data.extend_from_slice(&tag.to_be_bytes());
    EncodedFrame {
        data,
        timestamp_us: ts,
        duration_us: 20_000,
        keyframe: false,
    }
}

fn av_muxer() -> Fmp4Muxer {
    Fmp4Muxer::new(Some(video_config()), Some(AudioTrackConfig::new(48_000, 2))).unwrap()
}

fn drain(seg: &mut Segmenter) -> Vec<MediaSegment> {
    std::iter::from_fn(|| seg.poll_segment()).collect()
}

fn parse(init: &InitSegment, s: &MediaSegment) -> Fragment {
    let mut f = parse_media_segment(&s.data, Some(init)).expect("segment parses");
    assert_eq!(f.len(), 1);
    f.remove(0)
}

/// Checks what must hold for any output: sequence numbers, tfdt continuity per track, the
/// keyframe flag against the first video sample, pts/duration against the video run.
fn check_invariants(muxer: &Fmp4Muxer, segments: &[MediaSegment]) -> InitSegment {
    let init = parse_init_segment(&muxer.init_segment()).unwrap();
    let mut ends = [None::<u64>; 3];
    let mut last_seq = 0;
    for s in segments {
        assert_eq!(s.seq, last_seq + 1, "sequence numbers increase by one");
        last_seq = s.seq;
        let f = parse(&init, s);
        assert_eq!(u64::from(f.sequence_number), s.seq);
        for t in &f.tracks {
            assert!(!t.samples.is_empty());
            let end = &mut ends[t.track_id as usize];
            if let Some(e) = *end {
                assert_eq!(
                    t.base_decode_time,
                    Some(e),
                    "track {} continuity",
                    t.track_id
                );
            }
            *end = Some(t.end_decode_time());
        }
        if let Some(v) = muxer.video_track_id().and_then(|id| f.track(id)) {
            assert_eq!(v.samples[0].is_sync(), s.keyframe);
            assert_eq!(v.base_decode_time, Some(s.pts_us));
            assert_eq!(v.end_decode_time() - s.pts_us, u64::from(s.duration_us));
        }
    }
    init
}

#[test]
fn init_segment_layout() {
    let muxer = av_muxer();
    let bytes = muxer.init_segment();
    let top: Vec<_> = boxes(&bytes).map(|b| b.unwrap().kind.to_string()).collect();
    assert_eq!(top, ["ftyp", "moov"]);
    let moov = boxes(&bytes).nth(1).unwrap().unwrap();
    let kids: Vec<_> = moov
        .children()
        .map(|b| b.unwrap().kind.to_string())
        .collect();
    assert_eq!(kids, ["mvhd", "trak", "trak", "mvex"]);

    let init = parse_init_segment(&bytes).unwrap();
    assert!(init.fragmented);
    assert_eq!(init.tracks.len(), 2);
    let v = &init.tracks[0];
    assert_eq!((v.track_id, v.timescale), (1, 1_000_000));
    assert_eq!(v.handler.to_string(), "vide");
    assert_eq!(v.sample_entry.to_string(), "avc1");
    assert_eq!((v.width, v.height), (640, 360));
    let (kind, payload) = v.config.clone().unwrap();
    assert_eq!((kind.to_string(), payload), ("avcC".to_string(), avcc()));
    let a = &init.tracks[1];
    assert_eq!((a.track_id, a.timescale, a.channels), (2, 48_000, 2));
    assert_eq!(a.handler.to_string(), "soun");
    assert_eq!(a.sample_entry.to_string(), "Opus");
    let (kind, payload) = a.config.clone().unwrap();
    assert_eq!(kind.to_string(), "dOps");
    // Version 0, 2 channels, pre-skip 312, input rate 48000, gain 0, mapping family 0.
    assert_eq!(payload, [0, 2, 0x01, 0x38, 0, 0, 0xbb, 0x80, 0, 0, 0]);
    for t in &init.tracks {
        assert_eq!(t.trex.unwrap().sample_description_index, 1);
    }

    // Empty sample tables are present in each stbl.
    for trak in moov
        .children()
        .map(Result::unwrap)
        .filter(|b| b.kind == b"trak")
    {
        let stbl = trak
            .child(b"mdia")
            .unwrap()
            .unwrap()
            .child(b"minf")
            .unwrap()
            .unwrap()
            .child(b"stbl")
            .unwrap()
            .unwrap();
        let kids: Vec<_> = stbl
            .children()
            .map(|b| b.unwrap().kind.to_string())
            .collect();
        assert_eq!(kids, ["stsd", "stts", "stsc", "stco", "stsz"]);
    }
}

#[test]
fn mime_types() {
    assert_eq!(
        av_muxer().mime_type(),
        "video/mp4; codecs=\"avc1.42001f,opus\""
    );
    let v = Fmp4Muxer::new(Some(video_config()), None).unwrap();
    assert_eq!(v.mime_type(), "video/mp4; codecs=\"avc1.42001f\"");
    let a = Fmp4Muxer::new(None, Some(AudioTrackConfig::new(48_000, 1))).unwrap();
    assert_eq!(a.mime_type(), "audio/mp4; codecs=\"opus\"");
    assert_eq!(a.audio_track_id(), Some(1));
    let init = parse_init_segment(&a.init_segment()).unwrap();
    assert_eq!(init.tracks.len(), 1);
    assert_eq!(init.tracks[0].channels, 1);
}

/// 30 fps, keyframe every 15 frames, no durations (held until the next frame), 200 ms target:
/// segments of 6, 6 and 3 frames, the first of each keyframe interval flagged.
#[test]
fn video_segments_cut_at_target_and_before_keyframes() {
    let muxer = Fmp4Muxer::new(Some(video_config()), None).unwrap();
    let mut seg = Segmenter::new(muxer.clone(), 200_000);
    let base = 5_000_000; // timestamps need not start at 0
    let ts = |i: u64| base + (i * 1_000_000 + 15) / 30;
    let mut out = Vec::new();
    for i in 0..45u64 {
        seg.push_video(video(i as u32, ts(i), 0, i % 15 == 0))
            .unwrap();
        out.extend(drain(&mut seg));
    }
    // Frame 44 is held: its duration is unknown until flush.
    assert_eq!(out.len(), 8);
    seg.flush();
    out.extend(drain(&mut seg));
    assert_eq!(out.len(), 9);
    let init = check_invariants(&muxer, &out);
    let counts: Vec<_> = out
        .iter()
        .map(|s| parse(&init, s).tracks[0].samples.len())
        .collect();
    assert_eq!(counts, [6, 6, 3, 6, 6, 3, 6, 6, 3]);
    let flags: Vec<_> = out.iter().map(|s| s.keyframe).collect();
    assert_eq!(
        flags,
        [true, false, false, true, false, false, true, false, false]
    );
    assert_eq!(out[0].pts_us, 0);
    assert_eq!(out[1].pts_us, 200_000);
    assert_eq!(out[0].duration_us, 200_000);
    assert_eq!(out[3].pts_us, 500_000);
    // Every sample sits at its own timestamp; the last one got the previous duration.
    let mut i = 0;
    for s in &out {
        for sample in &parse(&init, s).tracks[0].samples {
            assert_eq!(sample.decode_time, ts(i) - base);
            let bytes = &s.data[sample.range()];
            assert_eq!(
                &bytes[5..9],
                &(i as u32).to_be_bytes(),
                "payload of frame {i}"
            );
            i += 1;
        }
    }
    assert_eq!(i, 45);
    let last_duration = ts(44) - ts(43);
    assert_eq!(
        out[8].pts_us + u64::from(out[8].duration_us),
        ts(44) - base + last_duration
    );
}

#[test]
fn frames_with_durations_close_segments_without_waiting() {
    let muxer = Fmp4Muxer::new(Some(video_config()), None).unwrap();
    let mut seg = Segmenter::new(muxer, 100_000);
    for i in 0..3u64 {
        seg.push_video(video(i as u32, i * 40_000, 40_000, i == 0))
            .unwrap();
    }
    // 120 ms placed: the segment closed as soon as the third frame (with its duration) arrived.
    let s = seg
        .poll_segment()
        .expect("closed without waiting for the next frame");
    assert_eq!((s.pts_us, s.duration_us, s.keyframe), (0, 120_000, true));
    assert!(seg.poll_segment().is_none());
}

#[test]
fn audio_goes_into_the_segment_covering_it() {
    let muxer = av_muxer();
    let mut seg = Segmenter::new(muxer.clone(), 200_000);
    // Audio starts 30 ms before the first video frame and runs 100 ms ahead of video.
    let mut out = Vec::new();
    let mut next_audio = 0u64;
    let audio_at = |n: u64| 970_000 + n * 20_000;
    for i in 0..30u64 {
        let vts = 1_000_000 + i * 33_333;
        while audio_at(next_audio) <= vts + 100_000 {
            seg.push_audio(audio(next_audio as u32, audio_at(next_audio)))
                .unwrap();
            next_audio += 1;
        }
        seg.push_video(video(i as u32, vts, 33_333, i % 15 == 0))
            .unwrap();
        out.extend(drain(&mut seg));
    }
    seg.flush();
    out.extend(drain(&mut seg));
    let init = check_invariants(&muxer, &out);
    let mut audio_tags = Vec::new();
    for (n, s) in out.iter().enumerate() {
        let f = parse(&init, s);
        let end = s.pts_us + u64::from(s.duration_us);
        if let Some(a) = f.track(2) {
            for sample in &a.samples {
                let ts = sample.decode_time * 1_000_000 / 48_000;
                let last = n + 1 == out.len();
                assert!(ts < end || last, "audio at {ts} in segment ending {end}");
                assert!(
                    ts >= s.pts_us || n == 0,
                    "audio at {ts} before segment {}",
                    s.pts_us
                );
                let bytes = &s.data[sample.range()];
                audio_tags.push(u32::from_be_bytes(bytes[1..5].try_into().unwrap()));
            }
        }
    }
    // The packets at 970 and 990 ms start before the first keyframe (1000 ms) and are dropped;
    // the one at 1010 ms is the first kept, at 10 ms on the output timeline.
    assert_eq!(audio_tags, (2..next_audio as u32).collect::<Vec<_>>());
    let first_audio = parse(&init, &out[0]).track(2).unwrap().base_decode_time;
    assert_eq!(
        first_audio,
        Some(480),
        "first kept packet at 10 ms = 480 ticks"
    );
}

#[test]
fn a_stalled_audio_encoder_delays_video_by_one_segment_at_most() {
    let mut seg = Segmenter::new(av_muxer(), 100_000);
    seg.push_audio(audio(0, 0)).unwrap();
    let mut emitted = 0;
    for i in 0..12u64 {
        seg.push_video(video(i as u32, i * 25_000, 25_000, i == 0))
            .unwrap();
        emitted += drain(&mut seg).len();
    }
    // 300 ms of video closed into three 100 ms segments; the last waits for audio.
    assert_eq!(emitted, 2);
    seg.flush();
    assert_eq!(drain(&mut seg).len(), 1);
}

#[test]
fn flush_closes_early_and_the_timeline_continues() {
    let muxer = av_muxer();
    let mut seg = Segmenter::new(muxer.clone(), 200_000);
    let mut out = Vec::new();
    for i in 0..4u64 {
        seg.push_audio(audio(i as u32, i * 20_000)).unwrap();
        seg.push_video(video(i as u32, i * 20_000, 0, i == 0))
            .unwrap();
    }
    seg.flush();
    out.extend(drain(&mut seg));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].pts_us, out[0].duration_us), (0, 80_000));
    // After the flush the input resumes 5 ms late: the timeline still has no hole.
    for i in 4..20u64 {
        seg.push_audio(audio(i as u32, i * 20_000 + 5_000)).unwrap();
        seg.push_video(video(i as u32, i * 20_000 + 5_000, 0, i == 10))
            .unwrap();
        out.extend(drain(&mut seg));
    }
    seg.flush();
    out.extend(drain(&mut seg));
    check_invariants(&muxer, &out);
    assert_eq!(out[1].pts_us, 80_000);
    assert!(!out[1].keyframe);
    assert!(out.iter().skip(2).any(|s| s.keyframe));
}

#[test]
fn jittery_timestamps_keep_the_timeline_continuous() {
    let muxer = av_muxer();
    let mut seg = Segmenter::new(muxer.clone(), 150_000);
    let mut out = Vec::new();
    let mut vts = 0u64;
    let mut ats = 0u64;
    for i in 0..200u64 {
        // Durations that lie (frames overlap or leave gaps) and uneven spacing.
        let dur = [33_333u32, 0, 40_000, 10_000][i as usize % 4];
        seg.push_video(video(i as u32, vts, dur, i % 20 == 0))
            .unwrap();
        vts += [30_000, 36_000, 1_000, 70_000][i as usize % 4];
        while ats < vts {
            let mut a = audio(i as u32, ats);
            a.duration_us = [20_000, 0, 25_000][i as usize % 3];
            seg.push_audio(a).unwrap();
            ats += [20_000, 21_000, 3_000][(i as usize + 1) % 3];
        }
        out.extend(drain(&mut seg));
    }
    seg.flush();
    out.extend(drain(&mut seg));
    check_invariants(&muxer, &out);
    assert!(out.len() > 20);
}

#[test]
fn audio_only_streams_segment_on_audio() {
    let muxer = Fmp4Muxer::new(None, Some(AudioTrackConfig::new(48_000, 2))).unwrap();
    let mut seg = Segmenter::new(muxer.clone(), 100_000);
    let mut out = Vec::new();
    for i in 0..26u64 {
        seg.push_audio(audio(i as u32, 7_000_000 + i * 20_000))
            .unwrap();
        out.extend(drain(&mut seg));
    }
    assert_eq!(out.len(), 5);
    seg.flush();
    out.extend(drain(&mut seg));
    assert_eq!(out.len(), 6);
    let init = check_invariants(&muxer, &out);
    for (n, s) in out.iter().enumerate() {
        assert!(s.keyframe);
        assert_eq!(s.pts_us, n as u64 * 100_000);
        let f = parse(&init, s);
        assert_eq!(f.tracks[0].base_decode_time, Some(n as u64 * 4_800));
    }
}

#[test]
fn configuration_errors() {
    assert_eq!(
        Fmp4Muxer::new(None, None).unwrap_err(),
        MediaError::NoTracks
    );
    let bad = |f: fn(&mut VideoTrackConfig)| {
        let mut c = video_config();
        f(&mut c);
        Fmp4Muxer::new(Some(c), None).unwrap_err()
    };
    assert!(matches!(
        bad(|c| c.avcc.clear()),
        MediaError::BadAvcc { .. }
    ));
    assert!(matches!(bad(|c| c.avcc[0] = 2), MediaError::BadAvcc { .. }));
    assert!(matches!(
        bad(|c| c.avcc.truncate(12)),
        MediaError::BadAvcc { .. }
    ));
    assert!(matches!(
        bad(|c| c.avcc[5] = 0xe0),
        MediaError::BadAvcc { .. }
    ));
    assert!(matches!(
        bad(|c| c.avcc[4] = 0xfe),
        MediaError::BadAvcc { .. }
    ));
    assert!(matches!(
        bad(|c| c.avcc[8] = 0x68),
        MediaError::BadAvcc { .. }
    ));
    assert!(matches!(
        bad(|c| c.codec = "vp8".into()),
        MediaError::BadCodec { .. }
    ));
    assert!(matches!(
        bad(|c| c.codec = "avc1.42001g".into()),
        MediaError::BadCodec { .. }
    ));
    assert!(matches!(
        bad(|c| c.width = 0),
        MediaError::BadVideoSize { .. }
    ));
    let err = Fmp4Muxer::new(None, Some(AudioTrackConfig::new(48_000, 6))).unwrap_err();
    assert_eq!(err, MediaError::UnsupportedChannels { channels: 6 });
    let err = Fmp4Muxer::new(None, Some(AudioTrackConfig::new(0, 2))).unwrap_err();
    assert_eq!(err, MediaError::BadSampleRate { sample_rate: 0 });
}

#[test]
fn opus_head_is_read() {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
    let c = AudioTrackConfig::from_opus_head(&head).unwrap();
    assert_eq!((c.sample_rate, c.channels, c.pre_skip), (48_000, 2, 312));
    assert!(AudioTrackConfig::from_opus_head(&head[..18]).is_err());
    head[18] = 1;
    assert!(matches!(
        AudioTrackConfig::from_opus_head(&head),
        Err(MediaError::BadOpusHead { .. })
    ));
}

#[test]
fn frame_errors_leave_the_segmenter_usable() {
    let muxer = av_muxer();
    let mut seg = Segmenter::new(muxer.clone(), 100_000);
    assert_eq!(
        seg.push_video(video(0, 1_000, 0, false)).unwrap_err(),
        MediaError::FirstFrameNotKeyframe {
            timestamp_us: 1_000
        }
    );
    // Annex-B (start codes) instead of length prefixes.
    let annex_b = EncodedFrame {
        data: vec![0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, 0xff],
        timestamp_us: 0,
        duration_us: 0,
        keyframe: true,
    };
    assert!(matches!(
        seg.push_video(annex_b).unwrap_err(),
        MediaError::BadFrame {
            track: TrackKind::Video,
            ..
        }
    ));
    let mut empty = video(0, 0, 0, true);
    empty.data.clear();
    assert!(matches!(
        seg.push_video(empty),
        Err(MediaError::BadFrame { .. })
    ));
    let mut trailing = video(0, 0, 0, true);
    trailing.data.push(0);
    assert!(matches!(
        seg.push_video(trailing),
        Err(MediaError::BadFrame { .. })
    ));
    let mut empty_audio = audio(0, 0);
    empty_audio.data.clear();
    assert!(matches!(
        seg.push_audio(empty_audio),
        Err(MediaError::BadFrame { .. })
    ));

    seg.push_video(video(0, 0, 0, true)).unwrap();
    assert_eq!(
        seg.push_video(video(1, 0, 0, false)).unwrap_err(),
        MediaError::NonMonotonicTimestamp {
            track: TrackKind::Video,
            prev_us: 0,
            got_us: 0
        }
    );
    seg.push_audio(audio(0, 10_000)).unwrap();
    assert!(matches!(
        seg.push_audio(audio(1, 5_000)),
        Err(MediaError::NonMonotonicTimestamp {
            track: TrackKind::Audio,
            ..
        })
    ));
    for i in 1..10u64 {
        seg.push_video(video(i as u32, i * 33_000, 0, false))
            .unwrap();
    }
    seg.flush();
    let out = drain(&mut seg);
    assert!(!out.is_empty());
    check_invariants(&muxer, &out);

    let mut video_only = Segmenter::new(Fmp4Muxer::new(Some(video_config()), None).unwrap(), 1);
    assert_eq!(
        video_only.push_audio(audio(0, 0)).unwrap_err(),
        MediaError::NoSuchTrack {
            track: TrackKind::Audio
        }
    );
}

#[test]
fn parser_rejects_malformed_input() {
    let mut seg = Segmenter::new(av_muxer(), 50_000);
    seg.push_audio(audio(0, 0)).unwrap();
    seg.push_video(video(0, 0, 60_000, true)).unwrap();
    seg.push_audio(audio(1, 20_000)).unwrap();
    seg.flush();
    let good = seg.poll_segment().unwrap().data;
    assert!(parse_media_segment(&good, None).is_ok());

    // Truncated anywhere: a typed error.
    for cut in 0..good.len() {
        assert!(
            parse_media_segment(&good[..cut], None).is_err(),
            "cut at {cut}"
        );
    }
    // Box size smaller than its header.
    let mut bad = good.clone();
    bad[..4].copy_from_slice(&4u32.to_be_bytes());
    assert!(matches!(
        parse_media_segment(&bad, None),
        Err(ParseError::BadBoxSize { size: 4, .. })
    ));
    // A trun data offset pointing outside the mdat.
    let trun = good.windows(4).position(|w| w == b"trun").unwrap();
    let mut bad = good.clone();
    bad[trun + 12..trun + 16].copy_from_slice(&0x7000u32.to_be_bytes());
    assert!(matches!(
        parse_media_segment(&bad, None),
        Err(ParseError::SampleOutOfBounds { .. })
    ));
    // A sample count far beyond the trun's bytes.
    let mut bad = good.clone();
    bad[trun + 8..trun + 12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        parse_media_segment(&bad, None),
        Err(ParseError::Invalid { .. })
    ));
    // No moof at all; an init segment is not a media segment and vice versa.
    assert!(matches!(
        parse_media_segment(&av_muxer().init_segment(), None),
        Err(ParseError::Missing { child: "moof", .. })
    ));
    assert!(matches!(
        parse_init_segment(&good),
        Err(ParseError::Missing { child: "ftyp", .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parser_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_init_segment(&bytes);
        let _ = parse_media_segment(&bytes, None);
        for b in boxes(&bytes).flatten() {
            let _ = b.children().count();
        }
    }

    #[test]
    fn parser_never_panics_on_mutated_segments(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let muxer = av_muxer();
        let mut seg = Segmenter::new(muxer.clone(), 50_000);
        seg.push_audio(audio(0, 0)).unwrap();
        seg.push_video(video(0, 0, 60_000, true)).unwrap();
        seg.flush();
        let mut bytes = muxer.init_segment();
        bytes.extend(seg.poll_segment().unwrap().data);
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let bytes = &bytes[..cut.index(bytes.len() + 1)];
        if let Ok(init) = parse_init_segment(bytes) {
            let _ = parse_media_segment(bytes, Some(&init));
        }
        let _ = parse_media_segment(bytes, None);
    }

    /// Any frame pattern: all frames come out once, in order, and the invariants hold.
    #[test]
    fn random_streams_round_trip(
        gaps in proptest::collection::vec((1u64..80_000, any::<bool>(), 0u32..50_000, 1usize..300), 1..80),
        audio_gap in 5_000u64..40_000,
        target in 0u32..400_000,
    ) {
        let muxer = av_muxer();
        let mut seg = Segmenter::new(muxer.clone(), target);
        let mut out = Vec::new();
        let mut vts = 0u64;
        let mut ats = 0u64;
        let mut audio_sent = 0u32;
        for (i, (gap, key, dur, len)) in gaps.iter().enumerate() {
            let mut f = video(i as u32, vts, *dur, i == 0 || *key);
            f.data = nal_frame(i as u32, f.keyframe, *len);
            seg.push_video(f).unwrap();
            while ats <= vts {
                seg.push_audio(audio(audio_sent, ats)).unwrap();
                audio_sent += 1;
                ats += audio_gap;
            }
            vts += gap;
            out.extend(drain(&mut seg));
        }
        seg.flush();
        out.extend(drain(&mut seg));
        let init = check_invariants(&muxer, &out);
        let (mut v_seen, mut a_seen) = (0u32, 0u32);
        for s in &out {
            let f = parse(&init, s);
            if let Some(v) = f.track(1) {
                for x in &v.samples {
                    prop_assert_eq!(&s.data[x.offset + 5..x.offset + 9], &v_seen.to_be_bytes());
                    v_seen += 1;
                }
            }
            if let Some(a) = f.track(2) {
                for x in &a.samples {
                    prop_assert_eq!(&s.data[x.offset + 1..x.offset + 5], &a_seen.to_be_bytes());
                    a_seen += 1;
                }
            }
        }
        prop_assert_eq!(v_seen as usize, gaps.len());
        prop_assert_eq!(a_seen, audio_sent);
    }
}

#[test]
fn a_new_muxer_continues_the_timeline() {
    let mut seg = Segmenter::new(av_muxer(), 100_000);
    assert_eq!(seg.origin_us(), None);
    seg.push_audio(audio(0, 2_000_000)).unwrap();
    assert_eq!(
        seg.origin_us(),
        None,
        "audio waits for the first video keyframe"
    );
    seg.push_video(video(0, 2_000_000, 0, true)).unwrap();
    assert_eq!(seg.origin_us(), Some(2_000_000));
    seg.push_video(video(1, 2_033_000, 0, false)).unwrap();

    let mut bigger = video_config();
    bigger.width = 1280;
    bigger.height = 720;
    bigger.avcc[4] = 0xfd; // 2-byte NAL length prefixes from now on
    let muxer = Fmp4Muxer::new(Some(bigger), Some(AudioTrackConfig::new(48_000, 2))).unwrap();
    let video_only = Fmp4Muxer::new(Some(video_config()), None).unwrap();
    assert_eq!(
        seg.set_muxer(video_only).unwrap_err(),
        MediaError::TrackLayoutChanged
    );
    seg.set_muxer(muxer.clone()).unwrap();
    let mut out = drain(&mut seg);
    assert_eq!(out.len(), 1, "the old configuration's segment is flushed");

    let mut frame = vec![0, 6, 0x65, 1, 2, 3, 4, 5];
    seg.push_video(EncodedFrame {
        data: frame.clone(),
        timestamp_us: 2_066_000,
        duration_us: 0,
        keyframe: true,
    })
    .unwrap();
    frame[2] = 0x41;
    seg.push_video(EncodedFrame {
        data: frame,
        timestamp_us: 2_099_000,
        duration_us: 0,
        keyframe: false,
    })
    .unwrap();
    // A 4-byte-prefixed frame no longer matches the new avcC.
    assert!(seg.push_video(video(9, 2_132_000, 0, false)).is_err());
    seg.flush();
    out.extend(drain(&mut seg));
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].seq, 2);
    assert_eq!(out[1].pts_us, 66_000);
    assert!(out[1].keyframe);
    let init = parse_init_segment(&seg.muxer().init_segment()).unwrap();
    assert_eq!(init.tracks[0].width, 1280);
    check_invariants(&muxer, &out);
}

#[test]
fn aac_config_is_read_from_the_audio_specific_config() {
    // AAC-LC (2), 48 kHz (index 3), stereo: 00010 0011 0010 000.
    let c = AudioTrackConfig::aac(&[0x11, 0x90]).unwrap();
    assert_eq!(
        (c.sample_rate, c.channels, c.timescale()),
        (48_000, 2, 48_000)
    );
    assert_eq!(c.codec_string(), "mp4a.40.2");
    // 44.1 kHz (index 4), mono: 00010 0100 0001 000.
    let c = AudioTrackConfig::aac(&[0x12, 0x08]).unwrap();
    assert_eq!((c.sample_rate, c.channels), (44_100, 1));
    for bad in [
        &[][..],
        &[0x11],
        &[0x16, 0x90],
        &[0x11, 0x80],
        &[0x17, 0x90],
    ] {
        assert!(
            matches!(
                AudioTrackConfig::aac(bad),
                Err(MediaError::BadAudioSpecificConfig { .. })
            ),
            "{bad:?}"
        );
    }
    let muxer = Fmp4Muxer::new(Some(video_config()), Some(c)).unwrap();
    assert!(muxer.mime_type().ends_with(",mp4a.40.2\""));
    assert_eq!(muxer.audio_timescale(), Some(44_100));
}

#[test]
fn b_frame_composition_offsets_are_signed_and_relative_to_the_first_keyframe() {
    // Decode order I P B B at 33 ms, presentation order I B B P, with the offsets x264 gives
    // for a 2-frame reorder delay (I +66, P +132, B +33, B +33 ms).
    let muxer = Fmp4Muxer::new(Some(video_config()), None).unwrap();
    let init = parse_init_segment(&muxer.init_segment()).unwrap();
    let mut seg = Segmenter::new(muxer, 200_000);
    let offsets = [66_000i64, 132_000, 33_000, 33_000];
    for (i, o) in offsets.iter().enumerate() {
        let f = video(i as u32, 1_000_000 + i as u64 * 33_000, 33_000, i == 0);
        seg.push_video_reordered(f, *o).unwrap();
    }
    seg.flush();
    let segments = drain(&mut seg);
    assert_eq!(segments.len(), 1);
    let tf = parse(&init, &segments[0]).tracks.remove(0);
    let got: Vec<i64> = tf.samples.iter().map(|s| s.composition_offset).collect();
    assert_eq!(got, [0, 66_000, -33_000, -33_000]);
    let pts: Vec<i64> = tf
        .samples
        .iter()
        .map(|s| s.decode_time as i64 + s.composition_offset)
        .collect();
    assert_eq!(pts, [0, 99_000, 33_000, 66_000], "I at 0, then B, B, P");
    // An offset beyond the signed 32-bit range is refused, and leaves the segmenter usable.
    let err = seg
        .push_video_reordered(video(9, 2_000_000, 33_000, true), 1 << 40)
        .unwrap_err();
    assert!(
        matches!(err, MediaError::BadCompositionOffset { .. }),
        "{err}"
    );
    seg.push_video_reordered(video(10, 2_000_000, 33_000, true), 66_000)
        .unwrap();
    seg.flush();
    let tf = parse(&init, &drain(&mut seg)[0]).tracks.remove(0);
    assert_eq!(tf.samples[0].composition_offset, 0);
}
