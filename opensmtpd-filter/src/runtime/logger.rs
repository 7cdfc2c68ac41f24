//! A small logger to stderr, which smtpd copies into its own log.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    name: &'static str,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line, so lines of concurrent writers never interleave.
        let line = format!(
            "{}: {}: {}\n",
            self.name,
            record.level().as_str().to_lowercase(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Sends `log` records at `level` and above to stderr as `NAME: level: message` lines.
/// Does nothing if a logger is already installed.
pub fn init_logging(name: &'static str, level: LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLogger { name })).is_ok() {
        log::set_max_level(level);
    }
}
