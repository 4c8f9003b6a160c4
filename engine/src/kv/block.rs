//! A KV block: the keys and values of [`BLOCK_TOKENS`] tokens for every layer, with the
//! hash that identifies it, and its byte form for moving it between peers or to disk.
//!
//! Byte form (little-endian): `PYKV`, version u16, model id, parent hash, block hash,
//! 16 token ids (u32), layout (layers, kv heads, head dim: u32; dtype: u8), data length
//! (u64), data, and BLAKE3 of everything before it. Import checks the checksum, the
//! layout's size, and that the hash is the hash of (model, parent, tokens).

use super::hash::{BLOCK_TOKENS, BlockHash, ModelId, block_hash};

const MAGIC: &[u8; 4] = b"PYKV";
const VERSION: u16 = 1;

/// Element type of the cached tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// The shape of a model's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub dtype: DType,
}

impl KvLayout {
    /// Bytes of one layer of a block: (key, value) × kv heads × tokens × head dim × dtype
    /// (saturating: a layout read off the wire may be absurd).
    pub fn layer_bytes(&self) -> usize {
        (2 * BLOCK_TOKENS * self.dtype.bytes()).saturating_mul(self.kv_heads as usize).saturating_mul(self.head_dim as usize)
    }

    /// Bytes of one block: every layer's.
    pub fn block_bytes(&self) -> usize {
        self.layer_bytes().saturating_mul(self.layers as usize)
    }
}

/// Why a block's byte form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("not a KV block ({0})")]
    Format(&'static str),
    #[error("KV block format version {0} is not supported (this engine reads {VERSION})")]
    Version(u16),
    #[error("KV block checksum mismatch: corrupt or truncated")]
    Checksum,
    #[error("KV block is for another model")]
    WrongModel,
    #[error("KV block hash does not match its model, parent and tokens")]
    WrongHash,
    #[error("KV block data is {got} bytes; its layout needs {expected}")]
    Size { got: usize, expected: usize },
}

/// One block of cached keys and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBlock {
    pub model: ModelId,
    pub parent: BlockHash,
    pub hash: BlockHash,
    pub tokens: [u32; BLOCK_TOKENS],
    pub layout: KvLayout,
    /// Per layer, `layout.layer_bytes()`: keys then values, each [kv heads, 16, head dim].
    layers: Layers,
}

/// A block's layers.
#[derive(Debug, Clone)]
enum Layers {
    /// One allocation per layer (a block cut from a cache), so that a sequence's cache
    /// (per layer, all positions) and its blocks can trade memory a layer at a time
    /// instead of both being whole at once (`infer::cache`).
    Separate(Vec<Box<[u8]>>),
    /// The byte form the block arrived in, kept whole ([`KvBlock::import_owned`]): layer
    /// `l` is `each` bytes at `at + l * each`. A fetched block is copied once, into the
    /// cache that uses it, not first out of its record.
    Joined { bytes: Vec<u8>, at: usize, each: usize, count: usize },
}

impl Layers {
    fn get(&self, l: usize) -> Option<&[u8]> {
        match self {
            Self::Separate(layers) => layers.get(l).map(|b| &b[..]),
            Self::Joined { bytes, at, each, count } => (l < *count).then(|| bytes.get(at + l * each..at + (l + 1) * each)).flatten(),
        }
    }

    fn count(&self) -> usize {
        match self {
            Self::Separate(layers) => layers.len(),
            Self::Joined { count, .. } => *count,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.count()).filter_map(|l| self.get(l))
    }
}

/// The same keys and values, however they are held.
impl PartialEq for Layers {
    fn eq(&self, other: &Self) -> bool {
        self.count() == other.count() && self.iter().eq(other.iter())
    }
}

impl Eq for Layers {}

impl KvBlock {
    /// A block for `tokens` after `parent`; `data` (every layer, one after another) must
    /// match the layout's size.
    pub fn new(model: ModelId, parent: BlockHash, tokens: [u32; BLOCK_TOKENS], layout: KvLayout, data: Vec<u8>) -> Result<Self, BlockError> {
        Self::from_data(model, parent, tokens, layout, &data)
    }

    fn from_data(model: ModelId, parent: BlockHash, tokens: [u32; BLOCK_TOKENS], layout: KvLayout, data: &[u8]) -> Result<Self, BlockError> {
        if data.len() != layout.block_bytes() {
            return Err(BlockError::Size { got: data.len(), expected: layout.block_bytes() });
        }
        let layers = data.chunks_exact(layout.layer_bytes().max(1)).map(Box::from).collect();
        Self::from_layers(model, parent, tokens, layout, layers)
    }

    /// A block from its layers' bytes (`layout.layers` of `layout.layer_bytes()` each).
    pub fn from_layers(model: ModelId, parent: BlockHash, tokens: [u32; BLOCK_TOKENS], layout: KvLayout, layers: Vec<Box<[u8]>>) -> Result<Self, BlockError> {
        let got: usize = layers.iter().map(|l| l.len()).sum();
        if layers.len() != layout.layers as usize || layers.iter().any(|l| l.len() != layout.layer_bytes()) {
            return Err(BlockError::Size { got, expected: layout.block_bytes() });
        }
        let hash = block_hash(&model, &parent, &tokens);
        Ok(Self { model, parent, hash, tokens, layout, layers: Layers::Separate(layers) })
    }

    /// Layer `l`'s keys then values.
    pub fn layer(&self, l: usize) -> Option<&[u8]> {
        self.layers.get(l)
    }

    /// The layers' bytes, to be let go one by one (copied apart if they arrived whole).
    pub fn into_layers(self) -> Vec<Box<[u8]>> {
        match self.layers {
            Layers::Separate(layers) => layers,
            joined => joined.iter().map(Box::from).collect(),
        }
    }

    /// Every layer's bytes, one after another (a copy).
    pub fn data(&self) -> Vec<u8> {
        self.layers.iter().collect::<Vec<_>>().concat()
    }

    /// Length of the byte form of a block of `layout`: the header (magic, version, model,
    /// parent, hash, tokens, layout, data length), the data, the checksum.
    pub fn export_len(layout: &KvLayout) -> usize {
        (4 + 2 + 3 * 32 + 4 * BLOCK_TOKENS + 3 * 4 + 1 + 8 + 32usize).saturating_add(layout.block_bytes())
    }

    /// Bytes this block takes in a tier.
    pub fn size(&self) -> usize {
        self.layers.iter().map(<[u8]>::len).sum()
    }

    /// The byte form.
    pub fn export(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::export_len(&self.layout));
        self.export_into(&mut out, Integrity::Checksum);
        out
    }

    /// Appends the byte form to `out` ([`Self::export_len`] bytes); with
    /// [`Integrity::Authenticated`] its checksum is left zero.
    pub fn export_into(&self, out: &mut Vec<u8>, integrity: Integrity) {
        let start = out.len();
        out.reserve(Self::export_len(&self.layout));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.model.0);
        out.extend_from_slice(&self.parent.0);
        out.extend_from_slice(&self.hash.0);
        for t in &self.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for v in [self.layout.layers, self.layout.kv_heads, self.layout.head_dim] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(match self.layout.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
        });
        out.extend_from_slice(&(self.size() as u64).to_le_bytes());
        for layer in self.layers.iter() {
            out.extend_from_slice(layer);
        }
        let checksum = match integrity {
            Integrity::Checksum => *blake3::hash(&out[start..]).as_bytes(),
            Integrity::Authenticated => [0; 32],
        };
        out.extend_from_slice(&checksum);
    }

    /// Reads a block's byte form, checking everything; `model` is the model it must be for.
    pub fn import(bytes: &[u8], model: &ModelId) -> Result<Self, BlockError> {
        Self::import_with(bytes, model, Integrity::Checksum)
    }

    /// As [`Self::import`]; with [`Integrity::Authenticated`] the checksum is not checked
    /// (everything else is: format, model, layout, size, the hash of the tokens).
    pub fn import_with(bytes: &[u8], model: &ModelId, integrity: Integrity) -> Result<Self, BlockError> {
        let form = Form::parse(bytes, model, integrity)?;
        let block = Self::from_data(*model, form.parent, form.tokens, form.layout, &bytes[form.data.clone()])?;
        if block.hash != form.hash {
            return Err(BlockError::WrongHash);
        }
        Ok(block)
    }

    /// As [`Self::import_with`], keeping `bytes` as the block's storage: no copy.
    pub fn import_owned(bytes: Vec<u8>, model: &ModelId, integrity: Integrity) -> Result<Self, BlockError> {
        let Form { parent, hash, tokens, layout, data } = Form::parse(&bytes, model, integrity)?;
        let (each, count) = (layout.layer_bytes(), layout.layers as usize);
        if data.len() != layout.block_bytes() || (each == 0 && count > 0) {
            return Err(BlockError::Size { got: data.len(), expected: layout.block_bytes() });
        }
        if block_hash(model, &parent, &tokens) != hash {
            return Err(BlockError::WrongHash);
        }
        Ok(Self { model: *model, parent, hash, tokens, layout, layers: Layers::Joined { bytes, at: data.start, each, count } })
    }
}

/// A byte form's header, checked (format, version, model, checksum unless authenticated),
/// and where its data lies.
struct Form {
    parent: BlockHash,
    hash: BlockHash,
    tokens: [u32; BLOCK_TOKENS],
    layout: KvLayout,
    data: std::ops::Range<usize>,
}

impl Form {
    fn parse(bytes: &[u8], model: &ModelId, integrity: Integrity) -> Result<Self, BlockError> {
        if bytes.len() < 32 {
            return Err(BlockError::Format("too short"));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 32);
        if integrity == Integrity::Checksum && blake3::hash(body).as_bytes() != checksum {
            return Err(BlockError::Checksum);
        }
        let mut r = Reader { bytes: body, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(BlockError::Format("bad magic"));
        }
        let version = u16::from_le_bytes(r.array()?);
        if version != VERSION {
            return Err(BlockError::Version(version));
        }
        if ModelId(r.array()?) != *model {
            return Err(BlockError::WrongModel);
        }
        let parent = BlockHash(r.array()?);
        let hash = BlockHash(r.array()?);
        let mut tokens = [0u32; BLOCK_TOKENS];
        for t in &mut tokens {
            *t = u32::from_le_bytes(r.array()?);
        }
        let (layers, kv_heads, head_dim) = (u32::from_le_bytes(r.array()?), u32::from_le_bytes(r.array()?), u32::from_le_bytes(r.array()?));
        let dtype = match r.take(1)?[0] {
            0 => DType::F32,
            1 => DType::F16,
            _ => return Err(BlockError::Format("unknown dtype")),
        };
        let len = u64::from_le_bytes(r.array()?) as usize;
        let start = r.at;
        r.take(len)?;
        if r.at != body.len() {
            return Err(BlockError::Format("trailing bytes"));
        }
        Ok(Self { parent, hash, tokens, layout: KvLayout { layers, kv_heads, head_dim, dtype }, data: start..r.at })
    }
}

/// What guards a byte form's bytes on their way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Its BLAKE3 checksum (disk, a plain or unauthenticated channel).
    Checksum,
    /// The channel carries it authenticated (an AEAD record keyed for this one transfer,
    /// as on the KV bulk path): any change on the way is refused there, so the checksum
    /// is neither computed nor checked. It never guarded against the sender, who
    /// computes it.
    Authenticated,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(BlockError::Format("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::hash::ROOT;

    pub(crate) fn layout() -> KvLayout {
        KvLayout { layers: 2, kv_heads: 3, head_dim: 4, dtype: DType::F32 }
    }

    fn block(seed: u8) -> KvBlock {
        let data: Vec<u8> = (0..layout().block_bytes()).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let tokens: [u32; BLOCK_TOKENS] = std::array::from_fn(|i| i as u32 + u32::from(seed));
        KvBlock::new(ModelId::of(b"m"), ROOT, tokens, layout(), data).unwrap()
    }

    #[test]
    fn blocks_round_trip_through_their_byte_form() {
        let b = block(3);
        let bytes = b.export();
        assert_eq!(bytes.len(), KvBlock::export_len(&b.layout));
        assert_eq!(KvBlock::import(&bytes, &b.model).unwrap(), b);
    }

    #[test]
    fn corrupt_foreign_and_forged_blocks_are_refused() {
        let b = block(5);
        let mut bytes = b.export();
        bytes[100] ^= 1;
        assert_eq!(KvBlock::import(&bytes, &b.model), Err(BlockError::Checksum));
        assert_eq!(KvBlock::import(&b.export(), &ModelId::of(b"other")), Err(BlockError::WrongModel));
        assert!(KvBlock::import(&b.export()[..50], &b.model).is_err());
        // A forged block: right checksum, but the hash is not that of its tokens.
        let mut forged = b.clone();
        forged.hash = BlockHash([7; 32]);
        assert_eq!(KvBlock::import(&forged.export(), &b.model), Err(BlockError::WrongHash));
        assert!(matches!(KvBlock::new(b.model, ROOT, b.tokens, layout(), vec![0; 3]), Err(BlockError::Size { .. })));
    }

    #[test]
    fn an_authenticated_byte_form_skips_only_the_checksum() {
        let b = block(6);
        let mut out = vec![9u8; 5]; // appended after what the buffer holds
        b.export_into(&mut out, Integrity::Authenticated);
        let bytes = &out[5..];
        assert_eq!(bytes.len(), KvBlock::export_len(&b.layout));
        assert_eq!(&bytes[bytes.len() - 32..], &[0; 32], "no checksum computed");
        assert_eq!(bytes[..bytes.len() - 32], b.export()[..bytes.len() - 32], "the same bytes otherwise");
        assert_eq!(KvBlock::import_with(bytes, &b.model, Integrity::Authenticated).unwrap(), b);
        assert_eq!(KvBlock::import(bytes, &b.model), Err(BlockError::Checksum), "a plain import still checks it");
        // Everything but the checksum is still checked.
        assert_eq!(KvBlock::import_with(bytes, &ModelId::of(b"other"), Integrity::Authenticated), Err(BlockError::WrongModel));
        assert!(KvBlock::import_with(&bytes[..bytes.len() - 40], &b.model, Integrity::Authenticated).is_err());
        let mut forged = b.clone();
        forged.hash = BlockHash([7; 32]);
        let mut out = Vec::new();
        forged.export_into(&mut out, Integrity::Authenticated);
        assert_eq!(KvBlock::import_with(&out, &b.model, Integrity::Authenticated), Err(BlockError::WrongHash));
    }

    #[test]
    fn a_block_kept_in_its_byte_form_is_the_same_block_and_checked_the_same() {
        let b = block(7);
        for integrity in [Integrity::Checksum, Integrity::Authenticated] {
            let mut bytes = Vec::new();
            b.export_into(&mut bytes, integrity);
            let owned = KvBlock::import_owned(bytes.clone(), &b.model, integrity).unwrap();
            assert_eq!(owned, b);
            assert!((0..2).all(|l| owned.layer(l) == b.layer(l)) && owned.layer(2).is_none());
            assert_eq!((owned.size(), owned.data()), (b.size(), b.data()));
            assert_eq!(owned.export(), b.export());
            assert_eq!(owned.clone().into_layers(), b.clone().into_layers());
            // Refused exactly as a copied import is.
            let refused = |bytes: &[u8], model: &ModelId| (KvBlock::import_owned(bytes.to_vec(), model, integrity), KvBlock::import_with(bytes, model, integrity));
            let (a, c) = refused(&bytes, &ModelId::of(b"other"));
            assert_eq!((a.unwrap_err(), c.unwrap_err()), (BlockError::WrongModel, BlockError::WrongModel));
            let (a, c) = refused(&bytes[..bytes.len() - 40], &b.model);
            assert_eq!(a.unwrap_err(), c.unwrap_err());
            let mut forged = b.clone();
            forged.hash = BlockHash([7; 32]);
            let mut out = Vec::new();
            forged.export_into(&mut out, integrity);
            let (a, c) = refused(&out, &b.model);
            assert_eq!((a.unwrap_err(), c.unwrap_err()), (BlockError::WrongHash, BlockError::WrongHash));
        }
        let mut bytes = b.export();
        bytes[100] ^= 1;
        assert_eq!(KvBlock::import_owned(bytes, &b.model, Integrity::Checksum), Err(BlockError::Checksum));
    }
}
