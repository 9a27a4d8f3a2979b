//! Logging for both programs: journald with structured fields under
//! systemd or when asked to (GLUE_LOG_JOURNALD=1, the container image),
//! stderr otherwise. `GLUE_LOG` filters.

pub fn init() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLUE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, journald adds the time and keeps the fields. The container
    // image sets GLUE_LOG_JOURNALD=1: with the host's /run/systemd mounted (the
    // documented `docker run` line) it logs to the host's journal too.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some()
        || (std::env::var_os("GLUE_LOG_JOURNALD").is_some_and(|v| v == "1")
            && std::path::Path::new("/run/systemd/journal/socket").exists());
    if journal {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald)
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}
