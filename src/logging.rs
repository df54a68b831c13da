//! Logging: tracing to stderr, as text or JSON, one line per event (docs/contract.md, "Log lines").
//! When stderr is systemd's journal stream, each line starts with its syslog priority (`<3>` an
//! error … `<7>` debug), which journald strips and records as the entry's priority.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RELAYD_LOG` overrides `[log].level` (same syntax).
pub fn init(log: &LogConfig) {
    let filter = std::env::var("RELAYD_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
    // Colours only for a person at a terminal: log files and journald get plain `key=value`.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let format = tracing_subscriber::fmt::format();
    let installed = match log.format {
        LogFormat::Json => {
            builder.json().event_format(Prioritized { journal, inner: format.json() }).try_init()
        }
        LogFormat::Text => builder.event_format(Prioritized { journal, inner: format }).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("relayd: logging not set up: {e}");
    }
}

/// Whether stderr is the stream systemd connected to the journal. systemd sets
/// `JOURNAL_STREAM=DEVICE:INODE` for it; a stderr redirected since (a shell, a wrapper) is
/// another file, whose lines must stay as they are.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((device, inode)) = journal_stream.and_then(|value| value.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|stat| stat.st_dev == device && stat.st_ino == inode)
}

/// The syslog priority journald reads from a line's `<N>` prefix (sd-daemon(3)).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that puts the event's priority before the line when `journal` holds.
struct Prioritized<F> {
    journal: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        self.inner.format_event(context, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_warnings_carry_their_syslog_priority() {
        let levels = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE];
        assert_eq!(levels.map(priority), [3, 4, 6, 7, 7]);
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_or_not_a_pair_is_not_the_journal() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:x")));
        // No file has inode 0.
        assert!(!stderr_is_journal(Some("0:0")));
    }
}
