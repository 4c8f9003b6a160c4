//! Signing and checking history entries: the author signs [`EntryId::signed_bytes`]
//! with its node key; anyone checks it against the key inside the author's PeerId.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use pyagent_protocol::history::{Entry, EntryBody, EntryError, EntryKey, HistoryEvent, SubjectId};

/// A signed entry by this node about `subject`.
pub fn sign(keypair: &Keypair, subject: SubjectId, event: HistoryEvent, now_unix_ms: u64) -> Result<(Entry, EntryKey), EntryError> {
    Signer::new(keypair.clone()).sign(subject, event, now_unix_ms)
}

/// Signs this node's entries (its PeerId text computed once, not per entry).
///
/// Ed25519 signatures are deterministic (RFC 8032), so any correct implementation gives the
/// same bytes for the same key and message; signing, an append's main cost, goes through
/// AWS-LC (about twice as fast as `ed25519-dalek` here), with libp2p's own signing as the
/// fallback for a key AWS-LC does not take.
#[derive(Clone)]
pub struct Signer {
    keypair: Keypair,
    fast: Option<std::sync::Arc<aws_lc_rs::signature::Ed25519KeyPair>>,
    author: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("author", &self.author).field("aws_lc", &self.fast.is_some()).finish()
    }
}

/// The node key as AWS-LC's key pair (checked against its public key).
fn aws_lc_key(keypair: &Keypair) -> Option<aws_lc_rs::signature::Ed25519KeyPair> {
    let ed = keypair.clone().try_into_ed25519().ok()?;
    let mut bytes = ed.to_bytes();
    let key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..]).ok();
    bytes.fill(0);
    key
}

impl Signer {
    pub fn new(keypair: Keypair) -> Self {
        let author = keypair.public().to_peer_id().to_string();
        let fast = aws_lc_key(&keypair).map(std::sync::Arc::new);
        Self { keypair, fast, author }
    }

    pub fn sign(&self, subject: SubjectId, event: HistoryEvent, now_unix_ms: u64) -> Result<(Entry, EntryKey), EntryError> {
        let body = EntryBody { author: self.author.clone(), author_unix_ms: now_unix_ms, subject, event };
        let id = body.id()?;
        let message = id.signed_bytes();
        let signature = match &self.fast {
            Some(key) => key.sign(&message).as_ref().to_vec(),
            None => self.keypair.sign(&message).map_err(|e| EntryError::Codec(format!("cannot sign: {e}")))?,
        };
        Ok((Entry { body, signature }, EntryKey { subject, id }))
    }

    /// Signs many entries on every core (ed25519 signing is most of an append's cost).
    pub fn sign_all(&self, events: Vec<(SubjectId, HistoryEvent)>, now_unix_ms: u64) -> Result<Vec<(Entry, EntryKey)>, EntryError> {
        par_map(events, |(subject, event)| self.sign(subject, event, now_unix_ms)).into_iter().collect()
    }
}

/// `f` over `items` on up to every core, in order; small inputs stay on this thread.
pub fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if threads < 2 || items.len() < 64 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks.into_iter().map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// Checks an entry from outside: bounds, then the author's signature (an ed25519 key: the
/// only kind this swarm's nodes have). Returns its key.
pub fn verify(entry: &Entry) -> Result<EntryKey, EntryError> {
    let key = entry.validate()?;
    let bad = || EntryError::BadSignature { author: entry.body.author.chars().take(64).collect() };
    let author: PeerId = entry.body.author.parse().map_err(|_| bad())?;
    let public = crate::identity::ed25519_key_of(&author).ok_or_else(bad)?;
    // AWS-LC, as for signing: a replica's main cost is checking every entry it stores.
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public)
        .verify(&key.id.signed_bytes(), &entry.signature)
        .map_err(|_| bad())?;
    if let HistoryEvent::Ballot(ballot) = &entry.body.event {
        // The ballot inside carries its voter's own signature.
        crate::votes::signing::verify(ballot).map_err(|e| EntryError::Field { field: "ballot", reason: e.to_string() })?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::history::{MAX_DETAIL_LEN, shard_of};
    use pyagent_protocol::task::TaskId;

    fn signed() -> Entry {
        let kp = Keypair::generate_ed25519();
        sign(&kp, TaskId([3; 32]), HistoryEvent::Inference { model: "m".into(), detail: "d".into() }, 7).unwrap().0
    }

    #[test]
    fn the_key_read_from_a_peer_id_is_its_ed25519_key() {
        let kp = Keypair::generate_ed25519();
        let id = kp.public().to_peer_id();
        let expected = kp.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(crate::identity::ed25519_key_of(&id), Some(expected));
        assert_eq!(crate::identity::ed25519_key_of(&PeerId::random()), None, "a random PeerId holds no key");
    }

    #[test]
    fn aws_lc_signs_exactly_as_libp2p_does() {
        for _ in 0..20 {
            let kp = Keypair::generate_ed25519();
            let signer = Signer::new(kp.clone());
            assert!(signer.fast.is_some());
            let (entry, key) = signer.sign(TaskId([5; 32]), HistoryEvent::Inference { model: "m".into(), detail: "d".into() }, 9).unwrap();
            assert_eq!(entry.signature, kp.sign(&key.id.signed_bytes()).unwrap());
            assert_eq!(verify(&entry).unwrap(), key);
        }
    }

    #[test]
    fn a_signed_entry_verifies_and_any_change_is_refused() {
        let entry = signed();
        let key = verify(&entry).unwrap();
        assert_eq!(key.id, entry.body.id().unwrap());
        assert_eq!(shard_of(&key.subject), entry.shard());

        let mut forged = entry.clone();
        forged.body.author_unix_ms += 1; // a new id the signature does not cover
        assert!(matches!(verify(&forged), Err(EntryError::BadSignature { .. })));

        let mut other_author = entry.clone();
        other_author.body.author = PeerId::random().to_string();
        assert!(matches!(verify(&other_author), Err(EntryError::BadSignature { .. })));

        let mut corrupted = entry.clone();
        corrupted.signature[0] ^= 1;
        assert!(matches!(verify(&corrupted), Err(EntryError::BadSignature { .. })));

        let mut short = entry.clone();
        short.signature.truncate(10);
        assert!(verify(&short).unwrap_err().to_string().contains("signature"));

        let mut oversized = entry;
        oversized.body.event = HistoryEvent::Inference { model: "m".into(), detail: "x".repeat(MAX_DETAIL_LEN + 1) };
        assert!(verify(&oversized).unwrap_err().to_string().contains("detail"));
    }
}
