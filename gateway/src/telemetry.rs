//! Logging through `tracing`, to stderr, as text or JSON lines. Log events carry gate,
//! station and counts — never rider data (no ID numbers, card numbers, codes or
//! pseudonyms): those belong to the audit stream alone.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log.filter: {0}")]
pub struct BadFilter(String);

/// Installs the global subscriber. A second call (tests, the demo) keeps the first.
pub fn init(config: &LogConfig) -> Result<(), BadFilter> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|e| BadFilter(e.to_string()))?;
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
