//! Tasks and blobs on the wire.
//!
//! A task names a capability and the files it is about, by content: each file is a blob
//! whose id is the BLAKE3 hash of its bytes. The requester keeps the blobs; executors
//! fetch the ones they lack over request-response ([`crate::rpc`]) and verify each
//! against its id. A task's id is the BLAKE3 hash of its canonical encoding (the codec's
//! bytes for [`TaskSpec`], which are deterministic), so every node derives the same id.
//!
//! Flow, all on the namespace's task topic ([`crate::SwarmNamespace::task_topic`]):
//! `Submit` (requester) → `Claim` (the executor chosen by rendezvous hashing; repeated
//! as a lease heartbeat while it works) → the result goes straight to the requester →
//! `Done` (requester), after which nobody works on the task again.

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, MAX_FRAME_BYTES};

/// Largest blob (one source file).
pub const MAX_BLOB_BYTES: usize = 2 * 1024 * 1024;
/// Most files in one task.
pub const MAX_TASK_FILES: usize = 20_000;
/// Longest file path in a task.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest capability name.
pub const MAX_CAPABILITY_LEN: usize = 64;
/// Largest encoded task message on the gossip topic.
pub const MAX_TASK_MESSAGE_BYTES: usize = MAX_FRAME_BYTES;
/// Largest result (JSON text) sent back to a requester.
pub const MAX_RESULT_BYTES: usize = MAX_FRAME_BYTES - 4096;
/// Longest lease an executor may hold without renewing it.
pub const MAX_LEASE_MS: u32 = 60_000;
/// How a failed task's reason starts when its result was over [`MAX_RESULT_BYTES`]:
/// the requester may split the files over several tasks and try again.
pub const RESULT_TOO_LARGE: &str = "result too large:";

/// Checks a task file path: relative, `/`-separated, no `.`/`..` component, no empty
/// component, at most [`MAX_PATH_LEN`] bytes, no control characters and no Unicode
/// direction or invisible formatting characters (paths are shown to people, and a
/// right-to-left override makes `evil.py` read as something else). Returns the reason.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("the path is {} bytes long, over the limit of {MAX_PATH_LEN}", path.len()));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!("the path contains the control character U+{:04X}", u32::from(c)));
    }
    if let Some(c) = path.chars().find(|&c| is_format_char(c)) {
        return Err(format!("the path contains the invisible formatting character U+{:04X}", u32::from(c)));
    }
    if path.starts_with('/') || path.starts_with('\\') || path.as_bytes().get(1) == Some(&b':') {
        return Err("the path is absolute; task paths are relative to the analysed tree".into());
    }
    if path.contains('\\') {
        return Err("the path contains a backslash; task paths use '/'".into());
    }
    if let Some(part) = path.split('/').find(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!("the path has a {:?} component", part));
    }
    Ok(())
}

/// Unicode bidirectional controls and other invisible format characters: never shown raw.
pub fn is_format_char(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A 32-byte BLAKE3 hash, shown in hex.
macro_rules! hash_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The BLAKE3 hash of ", $what, ".")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_string()[..12])
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, IdParseError> {
                if s.len() != 64 || !s.is_ascii() {
                    return Err(IdParseError(s.chars().take(80).collect()));
                }
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| IdParseError(s.to_owned()))?;
                }
                Ok(Self(out))
            }
        }
    };
}

hash_id!(BlobId, "a blob's bytes");
hash_id!(TaskId, "a task's canonical encoding");

/// Text that is not a 64-digit hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an id (64 hex digits)")]
pub struct IdParseError(pub String);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// A file of a task: where it sits in the analysed tree, and its content's blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub blob: BlobId,
    pub size: u64,
}

/// What a requester asks the swarm to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// e.g. `python.complexity`.
    pub capability: String,
    pub files: Vec<FileRef>,
    /// PeerId of the requester: it holds the blobs and receives the result.
    pub requester: String,
    /// When it was submitted (requester's clock), and a random number: the same files
    /// submitted twice are two tasks.
    pub created_unix_ms: u64,
    pub nonce: u64,
    /// How long an executor's claim lasts without a renewal.
    pub lease_ms: u32,
}

/// Why a task, blob or task message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("message signed by {signer} but claims to be from {claimed}")]
    WrongSigner { signer: String, claimed: String },
    #[error("blob content does not match its id {0}")]
    BlobMismatch(BlobId),
    #[error("blob of {size} bytes exceeds the limit of {MAX_BLOB_BYTES}")]
    BlobTooLarge { size: usize },
    #[error("cannot encode: {0}")]
    Codec(String),
}

impl From<CodecError> for TaskError {
    fn from(e: CodecError) -> Self {
        TaskError::Codec(e.to_string())
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> TaskError {
    TaskError::Field { field, reason: reason.into() }
}

impl TaskSpec {
    /// The task's id: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> Result<TaskId, CodecError> {
        let bytes = crate::encode(self)?;
        Ok(TaskId(*blake3::hash(&bytes).as_bytes()))
    }

    /// Checks bounds and names. `signer` is the peer that published it, if known.
    pub fn validate(&self, signer: Option<&str>) -> Result<(), TaskError> {
        if self.capability.is_empty()
            || self.capability.len() > MAX_CAPABILITY_LEN
            || !self.capability.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(field("capability", format!("{:?} is not a capability name", self.capability)));
        }
        if self.files.is_empty() {
            return Err(field("files", "a task needs at least one file"));
        }
        if self.files.len() > MAX_TASK_FILES {
            return Err(field("files", format!("{} files, limit {MAX_TASK_FILES}", self.files.len())));
        }
        for file in &self.files {
            if let Err(reason) = check_path(&file.path) {
                let shown: String = file.path.chars().take(80).map(|c| if c.is_control() || is_format_char(c) { '?' } else { c }).collect();
                return Err(field("files.path", format!("bad path {shown:?}: {reason}")));
            }
            if file.size > MAX_BLOB_BYTES as u64 {
                return Err(field("files.size", format!("{}: {} bytes, limit {MAX_BLOB_BYTES}", file.path, file.size)));
            }
        }
        if self.lease_ms == 0 || self.lease_ms > MAX_LEASE_MS {
            return Err(field("lease_ms", format!("{} ms, allowed 1..={MAX_LEASE_MS}", self.lease_ms)));
        }
        if let Some(signer) = signer
            && signer != self.requester
        {
            return Err(TaskError::WrongSigner { signer: signer.to_owned(), claimed: self.requester.clone() });
        }
        Ok(())
    }
}

/// Checks a fetched blob against the id it was asked for.
pub fn verify_blob(id: &BlobId, bytes: &[u8]) -> Result<(), TaskError> {
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(TaskError::BlobTooLarge { size: bytes.len() });
    }
    if BlobId::of(bytes) != *id {
        return Err(TaskError::BlobMismatch(*id));
    }
    Ok(())
}

/// Messages of the task topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskMessage {
    /// A new task (published by its requester).
    Submit(TaskSpec),
    /// "I am executing it": published when starting and then every third of the lease.
    Claim { task: TaskId, executor: String },
    /// The requester has a result: nobody works on it any more.
    Done { task: TaskId, requester: String },
}

impl TaskMessage {
    /// Checks a message against the peer that signed it.
    pub fn validate(&self, signer: &str) -> Result<(), TaskError> {
        let same = |claimed: &str| {
            if claimed == signer {
                Ok(())
            } else {
                Err(TaskError::WrongSigner { signer: signer.to_owned(), claimed: claimed.to_owned() })
            }
        };
        match self {
            TaskMessage::Submit(spec) => spec.validate(Some(signer)),
            TaskMessage::Claim { executor, .. } => same(executor),
            TaskMessage::Done { requester, .. } => same(requester),
        }
    }
}

/// What an executor sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// The agent's result, as JSON text.
    Completed { result_json: String },
    /// The agent (or the executor) could not do it; the text says why.
    Failed { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            capability: "python.complexity".into(),
            files: vec![FileRef { path: "a.py".into(), blob: BlobId::of(b"x = 1\n"), size: 6 }],
            requester: "peerA".into(),
            created_unix_ms: 1,
            nonce: 7,
            lease_ms: 3000,
        }
    }

    #[test]
    fn task_ids_are_stable_and_depend_on_every_field() {
        let a = spec();
        assert_eq!(a.id().unwrap(), spec().id().unwrap());
        let mut b = spec();
        b.nonce = 8;
        assert_ne!(a.id().unwrap(), b.id().unwrap());
        let mut c = spec();
        c.files[0].blob = BlobId::of(b"x = 2\n");
        assert_ne!(a.id().unwrap(), c.id().unwrap());
        let text = a.id().unwrap().to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<TaskId>().unwrap(), a.id().unwrap());
        assert!("xyz".parse::<TaskId>().is_err());
    }

    #[test]
    fn malformed_tasks_are_refused_with_a_reason() {
        assert!(spec().validate(Some("peerA")).is_ok());
        let wrong = spec().validate(Some("peerB")).unwrap_err();
        assert!(matches!(wrong, TaskError::WrongSigner { .. }));
        let mut s = spec();
        s.capability = "bad name!".into();
        assert!(s.validate(None).unwrap_err().to_string().contains("capability"));
        let mut s = spec();
        s.files.clear();
        assert!(s.validate(None).is_err());
        let mut s = spec();
        s.files[0].size = MAX_BLOB_BYTES as u64 + 1;
        assert!(s.validate(None).unwrap_err().to_string().contains("limit"));
        let mut s = spec();
        s.lease_ms = 0;
        assert!(s.validate(None).is_err());
        let mut s = spec();
        s.files[0].path = "a\nb".into();
        assert!(s.validate(None).is_err());
        let mut s = spec();
        s.files[0].path = "../../../etc/passwd".into();
        let e = s.validate(None).unwrap_err().to_string();
        assert!(e.contains("\"..\" component"), "{e}");
    }

    #[test]
    fn paths_are_relative_visible_and_bounded() {
        for good in ["a.py", "pkg/sub/mod.py", "é/ü.py", "a b/c-d.py"] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        let refused = |p: &str| check_path(p).unwrap_err();
        assert!(refused("/etc/passwd").contains("absolute"));
        assert!(refused("C:/x.py").contains("absolute"));
        assert!(refused("../../../etc/passwd").contains(".."));
        assert!(refused("a//b.py").contains("\"\""));
        assert!(refused("./a.py").contains("\".\""));
        assert!(refused("a\\b.py").contains("backslash"));
        assert!(refused("tab\there.py").contains("U+0009"));
        assert!(refused("evil\u{202E}yp.exe").contains("U+202E"));
        assert!(refused("zero\u{200B}width.py").contains("U+200B"));
        assert!(refused(&"a/".repeat(600)).contains("limit"));
        assert!(refused("").contains("empty"));
    }

    #[test]
    fn blobs_are_verified_against_their_id() {
        let id = BlobId::of(b"hello");
        assert!(verify_blob(&id, b"hello").is_ok());
        assert_eq!(verify_blob(&id, b"hellO"), Err(TaskError::BlobMismatch(id)));
        let big = vec![0u8; MAX_BLOB_BYTES + 1];
        assert!(matches!(verify_blob(&BlobId::of(&big), &big), Err(TaskError::BlobTooLarge { .. })));
    }

    #[test]
    fn messages_must_come_from_who_they_name() {
        let task = spec().id().unwrap();
        assert!(TaskMessage::Claim { task, executor: "B".into() }.validate("B").is_ok());
        assert!(TaskMessage::Claim { task, executor: "B".into() }.validate("C").is_err());
        assert!(TaskMessage::Done { task, requester: "A".into() }.validate("B").is_err());
        assert!(TaskMessage::Submit(spec()).validate("peerA").is_ok());
    }
}
