//! The node's persistent ed25519 identity. Its PeerId is the node's id.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("identity file {path} is corrupt ({reason}); move it away to start with a new identity")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write identity {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the new identity: {0}")]
    Encode(String),
}

/// The public key inside an ed25519 PeerId (identity multihash), to check signatures of
/// ballots and history entries against their author.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

/// The raw ed25519 public key inside an identity PeerId, read without decoding the key
/// (a point decompression): the protobuf `{type: Ed25519, data: 32 bytes}`.
pub fn ed25519_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let digest = hash.digest();
    if hash.code() != 0 || digest.len() != 36 || digest[..4] != [0x08, 0x01, 0x12, 0x20] {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&digest[4..]);
    Some(key)
}

/// Loads the keypair at `path`, or creates one (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let keypair = Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| IdentityError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
            if keypair.key_type() != libp2p::identity::KeyType::Ed25519 {
                return Err(IdentityError::Corrupt { path: path.to_owned(), reason: "not an ed25519 key".into() });
            }
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), "identity file is readable by others; tightening to 0600");
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
            Ok(keypair)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(IdentityError::Read { path: path.to_owned(), source }),
    }
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair.to_protobuf_encoding().map_err(|e| IdentityError::Encode(e.to_string()))?;
    // Write to a temporary file first so a crash never leaves a half-written identity.
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| IdentityError::Write { path: path.to_owned(), source })?;
    tracing::info!(peer_id = %keypair.public().to_peer_id(), "created a new node identity");
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn corrupt_identity_is_an_error_not_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"garbage").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage", "the file is left alone");
    }
}
