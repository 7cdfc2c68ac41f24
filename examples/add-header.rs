//! A data-line filter: prepends a header to every message, line by line, without
//! buffering the message.
//!
//! ```text
//! filter "stamp" proc-exec "/path/to/add-header X-Filtered-By: add-header"
//! ```

use opensmtpd_filter::protocol::Interest;
use opensmtpd_filter::runtime::DataOutput;
use opensmtpd_filter::{Config, DataMode, Filter, Session};

struct AddHeader {
    header: Vec<u8>,
}

impl Filter for AddHeader {
    /// Whether the header was written for the message in progress.
    type Session = bool;

    fn interest(&self) -> Interest {
        // data-line brings commit with it; tx-begin tells a new message has started.
        Interest::new().report(opensmtpd_filter::protocol::EventKind::TxBegin)
    }

    fn data_mode(&self) -> DataMode {
        DataMode::Stream
    }

    fn on_report(
        &self,
        session: &mut Session<bool>,
        _report: &opensmtpd_filter::protocol::Report<'_>,
    ) {
        session.state = false;
    }

    fn on_data_line(&self, session: &mut Session<bool>, _line: &[u8], out: &mut DataOutput<'_>) {
        if !session.state {
            session.state = true;
            out.line(&self.header);
        }
        out.pass();
    }
}

fn main() {
    opensmtpd_filter::runtime::init_logging("add-header", log::LevelFilter::Info);
    let header = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let header = if header.is_empty() {
        "X-Filtered-By: add-header".to_string()
    } else {
        header
    };
    if !header.contains(':') || header.contains(['\r', '\n']) {
        eprintln!(
            "add-header: the argument must be one header line, 'Name: value'; got {header:?}"
        );
        std::process::exit(2);
    }
    let filter = AddHeader {
        header: header.into_bytes(),
    };
    if let Err(e) = opensmtpd_filter::run(filter, Config::default()) {
        log::error!("cannot start: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opensmtpd_filter::testkit::TestKit;

    #[tokio::test]
    async fn one_header_per_message() {
        let mut kit = TestKit::new(AddHeader {
            header: b"X-A: b".to_vec(),
        })
        .start()
        .await;
        let mut s = kit.session();
        for _ in 0..2 {
            s.mail_from("a@example.org").await;
            let out = s.data(&[&b"Subject: x"[..], b"", b".body"]).await;
            assert_eq!(
                out.lines,
                vec![
                    b"X-A: b".to_vec(),
                    b"Subject: x".to_vec(),
                    b"".to_vec(),
                    b".body".to_vec()
                ]
            );
        }
        kit.finish().await;
    }
}
