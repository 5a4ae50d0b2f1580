//! The source's side: signing init segments and media segments as they are published, and
//! putting them into the swarm like verified data from a neighbour.

use super::api::PublishError;
use super::id::PeerId;
use super::identity::StreamKey;
use super::segment::{
    InitSegment, SegmentHeader, SegmentMeta, SignedHeader, MAX_INIT_SIZE, MAX_MIME_LEN,
    MAX_PIECES_PER_SEGMENT, PIECE_SIZE,
};
use super::store::StoredPiece;
use super::swarm::Swarm;
use super::time::Instant;
use std::sync::Arc;

/// What only the source has: the stream's signing key and the numbers it has handed out.
pub(crate) struct Publisher {
    key: StreamKey,
    /// Sequence number of the next segment.
    next_seq: u64,
    /// Newest init version published; 0 before the first.
    init_version: u32,
}

impl Publisher {
    /// A source that has published nothing yet.
    pub(crate) fn new(key: StreamKey) -> Self {
        Publisher {
            key,
            next_seq: 0,
            init_version: 0,
        }
    }

    /// Signs the next version of the init segment.
    fn sign_init(&mut self, mime: &str, data: Vec<u8>) -> Result<Arc<InitSegment>, PublishError> {
        if data.len() > MAX_INIT_SIZE || mime.len() > MAX_MIME_LEN {
            return Err(PublishError::BadSize {
                len: data.len(),
                max: MAX_INIT_SIZE,
            });
        }
        self.init_version += 1;
        let init = self.key.sign_init(self.init_version, mime.to_owned(), data);
        Ok(Arc::new(init))
    }

    /// Numbers and signs the header of the next segment, captured `now`, which decodes with
    /// the newest init version.
    fn sign_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: &[u8],
    ) -> Result<Arc<SignedHeader>, PublishError> {
        if self.init_version == 0 {
            return Err(PublishError::NoInit);
        }
        let max = MAX_PIECES_PER_SEGMENT * PIECE_SIZE;
        if data.is_empty() || data.len() > max {
            return Err(PublishError::BadSize {
                len: data.len(),
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let header = SegmentHeader::describe(seq, self.init_version, meta, now.as_micros(), data);
        Ok(Arc::new(self.key.sign_header(header)))
    }
}

impl Swarm {
    /// See [`Swarm::publish_init`].
    pub(crate) fn do_publish_init(
        &mut self,
        now: Instant,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<u32, PublishError> {
        self.now = self.now.max(now);
        let Some(publisher) = &mut self.publisher else {
            return Err(PublishError::NotSource);
        };
        let init = publisher.sign_init(mime, data)?;
        let version = init.version;
        self.store.add_init(init);
        let peers: Vec<PeerId> = self.established().collect();
        for p in peers {
            self.send_init(p);
        }
        let now = self.now;
        self.flush(now);
        Ok(version)
    }

    /// See [`Swarm::publish_segment`].
    pub(crate) fn do_publish_segment(
        &mut self,
        now: Instant,
        meta: SegmentMeta,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        self.now = self.now.max(now);
        let now = self.now;
        let Some(publisher) = &mut self.publisher else {
            return Err(PublishError::NotSource);
        };
        let signed = publisher.sign_segment(now, meta, &data)?;
        let seq = signed.header.seq;
        self.insert_header(now, signed);
        for (i, chunk) in data.chunks(PIECE_SIZE).enumerate() {
            let piece = StoredPiece::encode(seq, i as u16, chunk);
            self.store_piece(seq, i, piece, None);
        }
        self.flush(now);
        Ok(seq)
    }
}
