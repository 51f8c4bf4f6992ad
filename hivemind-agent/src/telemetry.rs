//! Logging: `tracing` to stderr, as text or JSON, filtered by `HIVEMIND_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

pub const LOG_ENV: &str = "HIVEMIND_LOG";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid {LOG_ENV} filter")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
    #[error("a global logger is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec).map_err(TelemetryError::Filter)?,
        _ => EnvFilter::new("info"),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    result.map_err(TelemetryError::AlreadyInstalled)
}
