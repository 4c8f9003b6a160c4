//! KV blocks between peers: what a node says it holds, and the block transfer protocol.
//!
//! **Who holds what** ([`KvSummary`]): each model in a node's advert carries a Bloom
//! filter of the block hashes its pool holds. Block hashes are BLAKE3 outputs, so the
//! filter's `k` bit positions are read straight from the hash (bytes `4i..4i+4`, little
//! endian, modulo the filter's bits): no second hash, and every version agrees on them. A
//! filter is at most [`MAX_SUMMARY_BYTES`]; it is as stale as the advert (a node
//! publishes soon after its pool changes), and a false positive only costs a block answered [`KvFrameKind::Missing`].
//!
//! **Transfer** (`/pyagent/kv/1`, one libp2p stream per fetch): the requester writes one
//! [`KvRequest`] frame (4-byte big-endian length, then a [`crate::codec`] frame of at most
//! [`MAX_KV_REQUEST_BYTES`]); the server answers, in the order asked, one frame per block —
//! a 1-byte [`KvFrameKind`], a 4-byte big-endian length, then the payload: the block's own
//! checked byte form (`pyagent_engine::kv::KvBlock::export`) for `Block`, nothing for
//! `Missing` — and stops after the first `Missing` (only a prefix run is useful), or ends
//! with `Refused` and a UTF-8 reason. The block bytes are sent raw, not re-encoded: the
//! requester checks each one against its checksum, layout, size and the hash it asked for
//! before importing it.
//!
//! **Bulk path** ([`KvRequest::FetchBulk`]): an encrypted libp2p stream moves blocks at
//! the speed of its cipher and framing (ChaCha20-Poly1305 in small Noise messages, Yamux
//! frames), well below what the machines' TCP can carry. So a server with a bulk listener
//! may answer a `FetchBulk` with one `Bulk` frame, a [`BulkOffer`]: a TCP port, a one-time
//! 32-byte token and a fresh AES-256-GCM key, all sent inside the authenticated stream.
//! The requester opens a plain TCP connection to that port at the address it reached the
//! server at, writes the token, and reads the answer there instead: each frame as one
//! record — the frame's header as on the stream (kind and payload length, in the clear
//! but authenticated), then the payload sealed with AES-256-GCM under the offer's key,
//! nonce [`bulk_nonce`] of the record's number (from 0), the header as associated data,
//! then the 16-byte tag. A record that does not open is a bad block. A block's byte form
//! on this path carries a zero checksum (`Integrity::Authenticated` in the engine: the
//! AEAD already refuses any change on the way); everything else of it is checked as on the
//! stream. The stream stays open until the answer ends; an unknown or late token gets the
//! connection closed. A requester that cannot reach the port fetches over the stream
//! (`Fetch`) instead.
//!
//! **Offload**: a node short of KV memory writes [`KvRequest::Push`] and then the blocks
//! it would drop, as `Block` frames, to a peer that advertises free KV memory; the peer
//! checks each one and keeps it, and its summary then advertises it, so the node fetches
//! it back like any other block.
//!
//! **Disaggregated prefill**: a decode-role node writes [`KvRequest::Prefill`] with the
//! prompt's tokens (whole blocks) to a prefill-role peer; the peer computes their KV
//! blocks (reusing any it holds) and answers as for a `Fetch` of their hashes from block
//! `from` on. The requester computes those hashes from the tokens itself, so every block
//! is checked against what it asked for, as in a fetch.

use serde::{Deserialize, Serialize};

/// The stream protocol's name.
pub const KV_PROTOCOL: &str = "/pyagent/kv/1";
/// Largest request frame.
pub const MAX_KV_REQUEST_BYTES: usize = 64 * 1024;
/// Most blocks one request asks for (4,096 tokens of prefix).
pub const MAX_FETCH_BLOCKS: usize = 256;
/// Tokens per KV block (`pyagent_engine::kv::BLOCK_TOKENS`; the node checks they agree).
pub const BLOCK_TOKENS: usize = 16;
/// Most tokens one prefill request carries (the blocks of [`MAX_FETCH_BLOCKS`]).
pub const MAX_PREFILL_TOKENS: usize = MAX_FETCH_BLOCKS * BLOCK_TOKENS;
/// Largest payload of one answer frame: one block of a very large model (80 layers, 8 KV
/// heads of 128, fp32 is 10.5 MB).
pub const MAX_KV_FRAME_BYTES: usize = 32 << 20;
/// Largest Bloom filter of one model in an advert.
pub const MAX_SUMMARY_BYTES: usize = 4096;
/// Largest sum of the filters of one advert (which is at most 16 KiB in all).
pub const MAX_SUMMARIES_BYTES: usize = 8192;
/// Bits set per block in a summary.
pub const SUMMARY_HASHES: u8 = 7;
/// Filter bits per block held (about 1% false positives with 7 hashes).
const BITS_PER_BLOCK: usize = 10;

/// A Bloom filter of the block hashes a model's pool holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSummary {
    /// Blocks in the filter (for display and the false-positive estimate).
    pub blocks: u32,
    /// Bits set per block: 1..=8.
    pub hashes: u8,
    /// The filter; empty when the pool holds nothing. Its length is a power of two. Raw
    /// bytes on the wire, hex in JSON (`pyagent peers --json`).
    #[serde(with = "filter_bytes")]
    pub bits: Vec<u8>,
}

/// Bytes as bytes in binary formats and as hex in human-readable ones.
mod filter_bytes {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bits: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&bits.iter().map(|b| format!("{b:02x}")).collect::<String>())
        } else {
            s.serialize_bytes(bits)
        }
    }

    struct Bytes;

    impl Visitor<'_> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("filter bytes (hex in text)")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            if !v.len().is_multiple_of(2) || !v.is_ascii() {
                return Err(E::custom("not hex"));
            }
            (0..v.len()).step_by(2).map(|i| u8::from_str_radix(&v[i..i + 2], 16).map_err(|_| E::custom("not hex"))).collect()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() { d.deserialize_str(Bytes) } else { d.deserialize_bytes(Bytes) }
    }
}

/// Why a summary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("{0} bytes, limit {MAX_SUMMARY_BYTES}")]
    TooLarge(usize),
    #[error("{0} bytes is not a power of two")]
    Length(usize),
    #[error("{0} hashes per block; 1 to 8 are allowed")]
    Hashes(u8),
}

impl KvSummary {
    /// The filter of `hashes`, sized for them up to `max_bytes` (a larger pool fills its
    /// filter more and gets more false positives, never false negatives).
    pub fn of(hashes: &[[u8; 32]], max_bytes: usize) -> Self {
        if hashes.is_empty() || max_bytes == 0 {
            return Self::default();
        }
        let max = prev_power_of_two(max_bytes.min(MAX_SUMMARY_BYTES));
        let bytes = (hashes.len() * BITS_PER_BLOCK).div_ceil(8).next_power_of_two().clamp(8, max.max(8)).min(max);
        let mut bits = vec![0u8; bytes];
        for hash in hashes {
            for at in positions(hash, SUMMARY_HASHES, bytes * 8) {
                bits[at / 8] |= 1 << (at % 8);
            }
        }
        Self { blocks: u32::try_from(hashes.len()).unwrap_or(u32::MAX), hashes: SUMMARY_HASHES, bits }
    }

    /// Whether the block may be held (false: it surely is not).
    pub fn may_hold(&self, hash: &[u8; 32]) -> bool {
        if self.bits.is_empty() || self.hashes == 0 {
            return false;
        }
        positions(hash, self.hashes, self.bits.len() * 8).all(|at| self.bits[at / 8] & (1 << (at % 8)) != 0)
    }

    /// How many of `hashes`, from the first on, may be held.
    pub fn run(&self, hashes: &[[u8; 32]]) -> usize {
        hashes.iter().take_while(|h| self.may_hold(h)).count()
    }

    pub fn validate(&self) -> Result<(), SummaryError> {
        if self.bits.len() > MAX_SUMMARY_BYTES {
            return Err(SummaryError::TooLarge(self.bits.len()));
        }
        if !self.bits.is_empty() && !self.bits.len().is_power_of_two() {
            return Err(SummaryError::Length(self.bits.len()));
        }
        if !(1..=8).contains(&self.hashes) && !self.bits.is_empty() {
            return Err(SummaryError::Hashes(self.hashes));
        }
        Ok(())
    }
}

fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() { n } else { n.next_power_of_two() / 2 }
}

/// The filter positions of a hash: its bytes `4i..4i+4` modulo the bits (a power of two).
fn positions(hash: &[u8; 32], k: u8, bits: usize) -> impl Iterator<Item = usize> + '_ {
    (0..usize::from(k.min(8))).map(move |i| u32::from_le_bytes([hash[4 * i], hash[4 * i + 1], hash[4 * i + 2], hash[4 * i + 3]]) as usize % bits)
}

/// What a requester asks of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// The blocks with these hashes, in this order (a run of one prompt's prefix), of the
    /// model with this id (BLAKE3 of its files).
    Fetch { model_id: [u8; 32], hashes: Vec<[u8; 32]> },
    /// Keep these blocks (offloaded by a node short of KV memory): `blocks` answer-form
    /// frames of kind `Block` follow; each is checked and kept in the model's pool, and
    /// served from there like the node's own.
    Push { model_id: [u8; 32], blocks: u32 },
    /// Compute the KV blocks of `tokens` (whole blocks of a prompt's start, at most
    /// [`MAX_PREFILL_TOKENS`]) and answer with blocks `from..` of them, as for a `Fetch`.
    Prefill { model_id: [u8; 32], tokens: Vec<u32>, from: u32 },
    /// As `Fetch`, and the server may move the blocks over its bulk path: it answers
    /// either as for a `Fetch` or with one [`KvFrameKind::Bulk`] frame (a [`BulkOffer`]),
    /// after which the blocks come over that connection instead (see the module docs).
    FetchBulk { model_id: [u8; 32], hashes: Vec<[u8; 32]> },
}

/// Why a request is refused before it is served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvRequestError {
    #[error("no blocks asked for")]
    Empty,
    #[error("{0} blocks asked for, limit {MAX_FETCH_BLOCKS}")]
    TooMany(usize),
    #[error("{0} tokens to prefill: not whole blocks of {BLOCK_TOKENS}")]
    PartBlock(usize),
    #[error("blocks from {from} asked for, of a prompt of {blocks} blocks")]
    FromPastEnd { from: u32, blocks: usize },
}

impl KvRequest {
    pub fn validate(&self) -> Result<(), KvRequestError> {
        match self {
            Self::Fetch { hashes, .. } | Self::FetchBulk { hashes, .. } if hashes.is_empty() => Err(KvRequestError::Empty),
            Self::Fetch { hashes, .. } | Self::FetchBulk { hashes, .. } if hashes.len() > MAX_FETCH_BLOCKS => Err(KvRequestError::TooMany(hashes.len())),
            Self::Fetch { .. } | Self::FetchBulk { .. } => Ok(()),
            Self::Push { blocks: 0, .. } => Err(KvRequestError::Empty),
            Self::Push { blocks, .. } if *blocks as usize > MAX_FETCH_BLOCKS => Err(KvRequestError::TooMany(*blocks as usize)),
            Self::Push { .. } => Ok(()),
            Self::Prefill { tokens, .. } if tokens.is_empty() => Err(KvRequestError::Empty),
            Self::Prefill { tokens, .. } if tokens.len() % BLOCK_TOKENS != 0 => Err(KvRequestError::PartBlock(tokens.len())),
            Self::Prefill { tokens, .. } if tokens.len() > MAX_PREFILL_TOKENS => Err(KvRequestError::TooMany(tokens.len() / BLOCK_TOKENS)),
            Self::Prefill { tokens, from, .. } if *from as usize >= tokens.len() / BLOCK_TOKENS => {
                Err(KvRequestError::FromPastEnd { from: *from, blocks: tokens.len() / BLOCK_TOKENS })
            }
            Self::Prefill { .. } => Ok(()),
        }
    }
}

/// The kind of an answer frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvFrameKind {
    /// The payload is a block's byte form.
    Block,
    /// The next block asked for is not held (the answer ends here).
    Missing,
    /// The request is refused; the payload says why (UTF-8).
    Refused,
    /// The answer to a `FetchBulk` moves to the bulk path: the payload is a [`BulkOffer`]
    /// ([`BULK_OFFER_BYTES`]).
    Bulk,
}

/// Bytes before an answer frame's payload: kind, then length.
pub const KV_FRAME_HEADER: usize = 5;

impl KvFrameKind {
    pub fn byte(self) -> u8 {
        match self {
            Self::Block => 1,
            Self::Missing => 2,
            Self::Refused => 3,
            Self::Bulk => 4,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Block),
            2 => Some(Self::Missing),
            3 => Some(Self::Refused),
            4 => Some(Self::Bulk),
            _ => None,
        }
    }
}

/// Bytes of a [`BulkOffer`] on the wire: port, token, key.
pub const BULK_OFFER_BYTES: usize = 2 + 32 + 32;
/// Bytes of the AES-256-GCM tag that ends each bulk record.
pub const BULK_TAG_BYTES: usize = 16;

/// Where and how a `FetchBulk` answer goes on: the TCP port of the server's bulk listener
/// (on the address the requester reached it at), the one-time token the requester writes
/// first on that connection, and the AES-256-GCM key the records are sealed with. Sent
/// only over the authenticated, encrypted block stream; each offer is used once.
#[derive(Clone, PartialEq, Eq)]
pub struct BulkOffer {
    pub port: u16,
    pub token: [u8; 32],
    pub key: [u8; 32],
}

impl std::fmt::Debug for BulkOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and key are secrets.
        f.debug_struct("BulkOffer").field("port", &self.port).finish_non_exhaustive()
    }
}

impl BulkOffer {
    pub fn to_bytes(&self) -> [u8; BULK_OFFER_BYTES] {
        let mut b = [0u8; BULK_OFFER_BYTES];
        b[..2].copy_from_slice(&self.port.to_be_bytes());
        b[2..34].copy_from_slice(&self.token);
        b[34..].copy_from_slice(&self.key);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, KvFrameError> {
        if b.len() != BULK_OFFER_BYTES {
            return Err(KvFrameError::Offer(b.len()));
        }
        let port = u16::from_be_bytes([b[0], b[1]]);
        if port == 0 {
            return Err(KvFrameError::OfferPort);
        }
        let (mut token, mut key) = ([0u8; 32], [0u8; 32]);
        token.copy_from_slice(&b[2..34]);
        key.copy_from_slice(&b[34..]);
        Ok(Self { port, token, key })
    }
}

/// The 96-bit AES-GCM nonce of bulk record `n` (from 0): four zero bytes, then `n`
/// big-endian. A key seals one connection's records only, so no nonce repeats.
pub fn bulk_nonce(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// An answer frame's header.
pub fn frame_header(kind: KvFrameKind, len: usize) -> [u8; KV_FRAME_HEADER] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind.byte(), len[0], len[1], len[2], len[3]]
}

/// Why an answer frame's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvFrameError {
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("a frame of {0} bytes, limit {1}")]
    TooLarge(usize, usize),
    #[error("a bulk offer of {0} bytes; one is {BULK_OFFER_BYTES}")]
    Offer(usize),
    #[error("a bulk offer of port 0")]
    OfferPort,
}

/// Reads a header; `max` bounds the payload (the size of one block of the model asked for).
pub fn parse_header(header: [u8; KV_FRAME_HEADER], max: usize) -> Result<(KvFrameKind, usize), KvFrameError> {
    let kind = KvFrameKind::from_byte(header[0]).ok_or(KvFrameError::Kind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let max = max.min(MAX_KV_FRAME_BYTES);
    if len > max {
        return Err(KvFrameError::TooLarge(len, max));
    }
    Ok((kind, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> [u8; 32] {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    #[test]
    fn a_summary_holds_what_it_was_made_of_and_little_else() {
        let held: Vec<[u8; 32]> = (0..400).map(hash).collect();
        let s = KvSummary::of(&held, MAX_SUMMARY_BYTES);
        assert_eq!(s.validate(), Ok(()));
        assert!(s.bits.len() <= 1024 && s.bits.len().is_power_of_two(), "{}", s.bits.len());
        assert!(held.iter().all(|h| s.may_hold(h)), "no false negatives");
        let false_positives = (10_000..20_000).map(hash).filter(|h| s.may_hold(h)).count();
        assert!(false_positives < 300, "{false_positives} of 10,000 (expected about 1%)");
        assert_eq!(s.run(&held[..50]), 50);
        let mut broken: Vec<[u8; 32]> = held[..10].to_vec();
        broken.insert(5, hash(99_999));
        assert!(s.run(&broken) <= 6);
        // An empty pool has an empty filter, which holds nothing.
        let empty = KvSummary::of(&[], MAX_SUMMARY_BYTES);
        assert!(empty.bits.is_empty() && !empty.may_hold(&held[0]));
        // A filter capped small still has no false negatives.
        let small = KvSummary::of(&held, 100);
        assert_eq!(small.bits.len(), 64);
        assert!(held.iter().all(|h| small.may_hold(h)));
    }

    #[test]
    fn summaries_are_bytes_on_the_wire_and_hex_in_json() {
        let s = KvSummary::of(&[hash(1), hash(2)], 64);
        let frame = crate::codec::encode(&s).unwrap();
        assert!(frame.len() < s.bits.len() + 8, "{} bytes", frame.len());
        assert_eq!(crate::codec::decode::<KvSummary>(&frame, 1024).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(&format!("{:02x}", s.bits[0])), "{json}");
        assert_eq!(serde_json::from_str::<KvSummary>(&json).unwrap(), s);
        assert!(serde_json::from_str::<KvSummary>(r#"{"blocks":1,"hashes":7,"bits":"zz"}"#).is_err());
    }

    #[test]
    fn hostile_summaries_requests_and_frames_are_refused() {
        let mut s = KvSummary::of(&[hash(1)], 64);
        s.bits = vec![0; 100];
        assert_eq!(s.validate(), Err(SummaryError::Length(100)));
        s.bits = vec![0; 8192];
        assert_eq!(s.validate(), Err(SummaryError::TooLarge(8192)));
        s.bits = vec![0; 8];
        s.hashes = 9;
        assert_eq!(s.validate(), Err(SummaryError::Hashes(9)));
        let fetch = |n: usize| KvRequest::Fetch { model_id: [0; 32], hashes: vec![[1; 32]; n] };
        assert_eq!(fetch(0).validate(), Err(KvRequestError::Empty));
        assert_eq!(fetch(MAX_FETCH_BLOCKS + 1).validate(), Err(KvRequestError::TooMany(MAX_FETCH_BLOCKS + 1)));
        assert_eq!(fetch(MAX_FETCH_BLOCKS).validate(), Ok(()));
        let push = |blocks: u32| KvRequest::Push { model_id: [0; 32], blocks };
        assert_eq!(push(0).validate(), Err(KvRequestError::Empty));
        assert_eq!(push(MAX_FETCH_BLOCKS as u32 + 1).validate(), Err(KvRequestError::TooMany(MAX_FETCH_BLOCKS + 1)));
        assert_eq!(push(3).validate(), Ok(()));
        let prefill = |tokens: usize, from: u32| KvRequest::Prefill { model_id: [0; 32], tokens: vec![5; tokens], from };
        assert_eq!(prefill(0, 0).validate(), Err(KvRequestError::Empty));
        assert_eq!(prefill(40, 0).validate(), Err(KvRequestError::PartBlock(40)));
        assert_eq!(prefill(MAX_PREFILL_TOKENS + BLOCK_TOKENS, 0).validate(), Err(KvRequestError::TooMany(MAX_FETCH_BLOCKS + 1)));
        assert_eq!(prefill(48, 3).validate(), Err(KvRequestError::FromPastEnd { from: 3, blocks: 3 }));
        assert_eq!(prefill(48, 2).validate(), Ok(()));
        assert_eq!(prefill(MAX_PREFILL_TOKENS, 0).validate(), Ok(()));
        // The largest prefill request fits a request frame.
        let frame = crate::codec::encode(&KvRequest::Prefill { model_id: [0xff; 32], tokens: vec![u32::MAX; MAX_PREFILL_TOKENS], from: 0 }).unwrap();
        assert!(frame.len() <= MAX_KV_REQUEST_BYTES, "{} bytes", frame.len());
        assert_eq!(parse_header(frame_header(KvFrameKind::Block, 1000), 1000), Ok((KvFrameKind::Block, 1000)));
        assert_eq!(parse_header(frame_header(KvFrameKind::Block, 1001), 1000), Err(KvFrameError::TooLarge(1001, 1000)));
        assert_eq!(parse_header([9, 0, 0, 0, 0], 10), Err(KvFrameError::Kind(9)));
        assert_eq!(parse_header([1, 0xff, 0xff, 0xff, 0xff], usize::MAX), Err(KvFrameError::TooLarge(u32::MAX as usize, MAX_KV_FRAME_BYTES)));
        let bulk = |n: usize| KvRequest::FetchBulk { model_id: [0; 32], hashes: vec![[0; 32]; n] };
        assert_eq!(bulk(0).validate(), Err(KvRequestError::Empty));
        assert_eq!(bulk(MAX_FETCH_BLOCKS + 1).validate(), Err(KvRequestError::TooMany(MAX_FETCH_BLOCKS + 1)));
        assert_eq!(bulk(MAX_FETCH_BLOCKS).validate(), Ok(()));
    }

    #[test]
    fn bulk_offers_round_trip_and_malformed_ones_are_refused() {
        let offer = BulkOffer { port: 40_123, token: [3; 32], key: [9; 32] };
        let bytes = offer.to_bytes();
        assert_eq!(BulkOffer::from_bytes(&bytes), Ok(offer.clone()));
        assert_eq!(BulkOffer::from_bytes(&bytes[..65]), Err(KvFrameError::Offer(65)));
        assert_eq!(BulkOffer::from_bytes(&[bytes.as_slice(), &[0]].concat()), Err(KvFrameError::Offer(67)));
        let mut zero_port = bytes;
        zero_port[..2].copy_from_slice(&[0, 0]);
        assert_eq!(BulkOffer::from_bytes(&zero_port), Err(KvFrameError::OfferPort));
        // Secrets stay out of logs.
        let shown = format!("{offer:?}");
        assert!(shown.contains("40123") && !shown.contains("[3,") && !shown.contains("9, 9"), "{shown}");
        assert_eq!(KvFrameKind::from_byte(KvFrameKind::Bulk.byte()), Some(KvFrameKind::Bulk));
        // Nonces differ per record and never wrap within a connection's life.
        assert_ne!(bulk_nonce(0), bulk_nonce(1));
        assert_eq!(&bulk_nonce(u64::MAX)[..4], &[0; 4]);
    }
}
