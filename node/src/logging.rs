//! Log set-up: `tracing` to stderr, `RUST_LOG` honoured, pretty or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Default filter when `RUST_LOG` is unset: our crates at info, chatty dependencies at warn
/// (Kademlia at error: it warns "no known peers" on every lone start-up).
const DEFAULT_FILTER: &str = "info,libp2p_gossipsub=warn,libp2p_kad=error,libp2p_swarm=warn,mdns_sd=warn,zeromq=warn";

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal, never in files or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
