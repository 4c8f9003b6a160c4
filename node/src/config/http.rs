//! The HTTP API's configuration: `[http]` in the file, its validation, the bearer key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, DEFAULT_HTTP_PORT, invalid};

/// The OpenAI-compatible HTTP API, with `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    /// `IP:PORT`.
    pub bind: SocketAddr,
    /// Binding off loopback must be asked for, and needs `api_key_file` as well.
    pub allow_non_loopback: bool,
    /// A file holding the bearer key clients must send (`Authorization: Bearer KEY`);
    /// required off loopback, optional on it.
    pub api_key_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_HTTP_PORT),
            allow_non_loopback: false,
            api_key_file: None,
        }
    }
}

/// Validated [`HttpConfig`].
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// The bearer key, when one is required.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings").field("bind", &self.bind).field("api_key", &self.api_key.as_ref().map(|_| "<set>")).finish()
    }
}

/// Shortest bearer key accepted: a guessable key protects nothing.
pub const MIN_API_KEY_LEN: usize = 16;

/// Reads the bearer key file: one line of at least [`MIN_API_KEY_LEN`] printable ASCII
/// characters (at most 4 KiB read).
pub fn read_api_key(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut bytes))
        .map_err(|e| invalid("http.api_key_file", format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("http.api_key_file", format!("{} is not text", path.display())))?;
    let key = text.trim();
    if key.len() < MIN_API_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "http.api_key_file",
            format!("{} must hold one key of at least {MIN_API_KEY_LEN} printable characters without spaces (e.g. `openssl rand -hex 32`)", path.display()),
        ));
    }
    Ok(key.to_owned())
}

impl Config {
    pub(super) fn validate_http(&self) -> Result<Option<HttpSettings>, ConfigError> {
        let h = &self.http;
        if !h.enabled {
            return Ok(None);
        }
        let api_key = h.api_key_file.as_deref().map(read_api_key).transpose()?;
        if !h.bind.ip().is_loopback() {
            if !h.allow_non_loopback {
                return Err(invalid(
                    "http.bind",
                    format!("{} is not a loopback address; set http.allow_non_loopback (--http-allow-non-loopback) and a key (--http-api-key FILE) to expose the HTTP API", h.bind),
                ));
            }
            if api_key.is_none() {
                return Err(invalid("http.api_key_file", format!("binding the HTTP API to {} needs a bearer key: --http-api-key FILE", h.bind)));
            }
        }
        let taken = [("api.bind", self.api.bind), ("api.events_bind", self.api.events_bind)];
        if let Some((field, _)) = taken.iter().find(|(_, a)| *a == h.bind && h.bind.port() != 0) {
            return Err(invalid("http.bind", format!("must differ from {field}")));
        }
        Ok(Some(HttpSettings { bind: h.bind, api_key }))
    }
}
