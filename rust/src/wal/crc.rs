//! Chained, masked CRC-32C (Castagnoli), as in Oxia's WAL: each record's CRC
//! is seeded with the previous record's CRC, so two replicas hold the same
//! log exactly when their last CRCs agree.

const MASK_DELTA: u32 = 0xa282_ead8;

/// LevelDB-style mask, so that a CRC stored next to data it covers does not
/// look like a CRC of that data.
#[inline]
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// CRC of `payload` chained onto `previous` (the previous record's CRC).
#[inline]
pub fn chained(previous: u32, payload: &[u8]) -> u32 {
    mask(crc32c::crc32c_append(previous, payload))
}

/// CRC of a whole buffer, masked (used for index files).
#[inline]
pub fn of(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_matches_rotate_definition() {
        // (c >> 15 | c << 17) + 0xa282ead8, written out by hand.
        assert_eq!(mask(0), 0xa282_ead8);
        assert_eq!(mask(1), 0xa284_ead8);
        assert_eq!(mask(1 << 15), 0xa282_ead9);
    }

    #[test]
    fn chain_depends_on_previous() {
        assert_ne!(chained(0, b"abc"), chained(1, b"abc"));
        assert_eq!(chained(7, b"abc"), chained(7, b"abc"));
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 3720 test vector: 32 bytes of zeroes.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }
}
