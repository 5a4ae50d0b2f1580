//! The MP4 reader on arbitrary bytes: it reads segments received from peers, so it must return
//! errors, never panic or allocate without bound. Run: `cd fuzz && cargo +nightly fuzz run mp4_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmcast::media::parse::{boxes, parse_init_segment, parse_media_segment};

fuzz_target!(|data: &[u8]| {
    let init = parse_init_segment(data).ok();
    let _ = parse_media_segment(data, init.as_ref());
    let _ = parse_media_segment(data, None);
    for b in boxes(data).flatten() {
        for child in b.children().flatten() {
            let _ = child.full();
        }
    }
});
