//! The binary wire codec. Every message between peers, and every record this node stores,
//! goes through [`encode`] and [`decode`]; nothing else in the workspace names the
//! underlying encoder, so it can be swapped by changing this file.
//!
//! Frame: one byte of codec version, then the [postcard] 1.x encoding of the message
//! (varint integers, length-prefixed sequences, varint enum tags). Decoding is bounded by
//! a caller-given byte limit and rejects trailing bytes, so a malformed or oversized frame
//! is an error, never a panic or an unbounded allocation.
//!
//! Why postcard (codec version 2; version 1 was bincode 2, unmaintained since
//! RUSTSEC-2025-0141): it is maintained, its wire format is specified and frozen for all of
//! 1.x (the history DHT persists encoded entries, so the bytes must not drift under a
//! dependency bump), it works through serde (the wire types keep their derives), and it
//! never preallocates from a length prefix beyond serde's cautious hint, so a frame that
//! claims 2^64 elements fails at the end of its bytes instead of at the allocator.
//! MessagePack (`rmp-serde`) is self-describing and larger; `borsh` needs its own derives.
//!
//! Version 1 frames (written by earlier builds, e.g. local history records) are refused
//! with [`CodecError::UnsupportedVersion`], which names both versions.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte that starts every frame.
pub const CODEC_VERSION: u8 = 2;

/// Largest frame any peer-to-peer message may use, unless a caller asks for less.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("unsupported codec version {0} (this node speaks version {CODEC_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `value` into a frame.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let out = postcard::to_extend(value, vec![CODEC_VERSION]).map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge { len: out.len(), limit: MAX_FRAME_BYTES });
    }
    Ok(out)
}

/// Decodes one frame of at most `limit` bytes into a `T`.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, CodecError> {
    if frame.len() > limit {
        return Err(CodecError::TooLarge { len: frame.len(), limit });
    }
    let (&version, body) = frame.split_first().ok_or(CodecError::Empty)?;
    if version != CODEC_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample { name: "node".into(), values: vec![1, 300, u64::MAX] }
    }

    #[test]
    fn round_trip() {
        let frame = encode(&sample()).unwrap();
        assert_eq!(frame[0], CODEC_VERSION);
        let back: Sample = decode(&frame, MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn rejects_empty_frame() {
        assert!(matches!(decode::<Sample>(&[], 10), Err(CodecError::Empty)));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut frame = encode(&sample()).unwrap();
        frame[0] = 9;
        assert!(matches!(decode::<Sample>(&frame, MAX_FRAME_BYTES), Err(CodecError::UnsupportedVersion(9))));
    }

    #[test]
    fn rejects_oversized_frame_before_parsing() {
        let frame = encode(&sample()).unwrap();
        let err = decode::<Sample>(&frame, frame.len() - 1).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn rejects_truncated_frame() {
        let frame = encode(&sample()).unwrap();
        let err = decode::<Sample>(&frame[..frame.len() - 3], MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut frame = encode(&sample()).unwrap();
        frame.extend_from_slice(&[0, 0]);
        assert!(matches!(decode::<Sample>(&frame, MAX_FRAME_BYTES), Err(CodecError::TrailingBytes(2))));
    }

    #[test]
    fn rejects_length_prefix_claiming_huge_allocation() {
        // version byte, then a varint length of u64::MAX for the string.
        let frame = [CODEC_VERSION, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Sample>(&frame, MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0_u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state & 0xFF) as u8
                })
                .collect();
            let _ = decode::<Sample>(&bytes, MAX_FRAME_BYTES);
        }
    }
}
