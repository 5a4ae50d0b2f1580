//! Picture size from an H.264 sequence parameter set (ITU-T H.264 §7.3.2.1.1), which the
//! init segment's `avc1` entry needs and RTMP does not otherwise give reliably (onMetaData is
//! optional and goes stale when the encoder changes resolution).

/// Reads bits from an RBSP (emulation-prevention bytes already removed).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, &'static str> {
        let byte = self.data.get(self.pos / 8).ok_or("SPS ends early")?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Result<u32, &'static str> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// Unsigned Exp-Golomb (§9.1), at most 32 bits of value.
    fn ue(&mut self) -> Result<u32, &'static str> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("Exp-Golomb code too long");
            }
        }
        Ok(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }

    fn se(&mut self) -> Result<i64, &'static str> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Width and height in pixels (after cropping) of the SPS NAL unit `nal` (header byte first).
pub fn picture_size(nal: &[u8]) -> Result<(u16, u16), &'static str> {
    if nal.first().map(|h| h & 0x1f) != Some(7) {
        return Err("not an SPS NAL unit");
    }
    // Drop emulation-prevention bytes (00 00 03 -> 00 00).
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in &nal[1..] {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits {
        data: &rbsp,
        pos: 0,
    };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err("bad chroma_format_idc");
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err("too many ref frames in POC cycle");
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        2 => {}
        _ => return Err("bad pic_order_cnt_type"),
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        left = r.ue()?.into();
        right = r.ue()?.into();
        top = r.ue()?.into();
        bottom = r.ue()?.into();
    }
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (crop_x, crop_y) = match chroma_array_type {
        0 => (1, 2 - frame_mbs_only),
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (left + right));
    let height =
        ((2 - frame_mbs_only) * height_map_units * 16).checked_sub(crop_y * (top + bottom));
    match (width, height) {
        (Some(w), Some(h)) if w > 0 && h > 0 && w <= 0xffff && h <= 0xffff => {
            Ok((w as u16, h as u16))
        }
        _ => Err("picture size out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(picture_size(&[]).is_err());
        assert!(picture_size(&[0x67]).is_err());
        assert!(picture_size(&[0x68, 0x42]).is_err());
        for n in 0..64u8 {
            let mut sps = vec![0x67, 100, 0, 31];
            sps.extend((0..n).map(|i| i.wrapping_mul(37) ^ n));
            let _ = picture_size(&sps);
        }
    }
}
