//! A tiny ISO BMFF box writer: boxes are opened, filled and closed, and closing patches the
//! 32-bit size in, so nesting reads like the box tree it writes.

/// Appends boxes to a byte buffer.
pub(crate) struct BoxWriter {
    pub buf: Vec<u8>,
}

impl BoxWriter {
    pub fn new() -> Self {
        BoxWriter { buf: Vec::new() }
    }

    /// Starts a box; returns its offset, to pass to [`BoxWriter::end`].
    pub fn start(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.buf.len();
        self.u32(0);
        self.buf.extend_from_slice(kind);
        at
    }

    /// Starts a full box (version and 24-bit flags after the header).
    pub fn start_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.start(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        at
    }

    /// Closes the box started at `at` by writing its size. Our boxes stay far below 4 GiB
    /// (a segment holds a fraction of a second of media), so 32-bit sizes always suffice; the
    /// segmenter rejects frames that could break that.
    pub fn end(&mut self, at: usize) {
        let size = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    /// Overwrites a big-endian u32 written earlier (trun data offsets, known only once the moof
    /// is complete).
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

/// The unity transformation matrix of mvhd/tkhd.
pub(crate) const UNITY_MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];
