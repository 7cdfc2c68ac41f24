//! The pass-through filter: registers every `smtp-in` report event and every phase
//! smtpd queries, lets everything through and writes every message line back
//! unchanged. It is what the throughput benchmark runs.
//!
//! ```text
//! filter "passthrough" proc-exec "/path/to/passthrough"
//! ```

use opensmtpd_filter::protocol::Interest;
use opensmtpd_filter::{Config, DataMode, Filter};

struct Passthrough;

impl Filter for Passthrough {
    type Session = ();

    fn interest(&self) -> Interest {
        Interest::new().all_reports().all_phases()
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }
}

fn main() {
    opensmtpd_filter::runtime::init_logging("passthrough", log::LevelFilter::Info);
    if let Err(e) = opensmtpd_filter::run(Passthrough, Config::default()) {
        log::error!("cannot start: {e}");
    }
}
