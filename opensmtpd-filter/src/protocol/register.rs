//! Registration: which events and phases a filter asks smtpd for.

use super::fields::Subsystem;
use super::report::EventKind;
use super::request::Phase;

/// The set of report events and filter phases a filter handles. The registration
/// lines are generated from it, so nothing is registered that is not used (every
/// registered event costs smtpd a write and a wakeup per session).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Interest {
    reports_in: u32,
    reports_out: u32,
    phases: u16,
}

impl Interest {
    /// Nothing.
    pub const fn new() -> Interest {
        Interest {
            reports_in: 0,
            reports_out: 0,
            phases: 0,
        }
    }

    /// Adds a report event of `smtp-in`.
    pub const fn report(mut self, event: EventKind) -> Interest {
        self.reports_in |= 1 << event as u32;
        self
    }

    /// Adds a report event of `smtp-out`.
    pub const fn report_out(mut self, event: EventKind) -> Interest {
        self.reports_out |= 1 << event as u32;
        self
    }

    /// Adds a filter phase. Registering `data-line` registers `commit` too: a message
    /// whose line could not be echoed must be refused at commit.
    pub const fn phase(mut self, phase: Phase) -> Interest {
        self.phases |= 1 << phase as u32;
        if matches!(phase, Phase::DataLine) {
            self.phases |= 1 << Phase::Commit as u32;
        }
        self
    }

    /// Adds every `smtp-in` event.
    pub const fn all_reports(mut self) -> Interest {
        self.reports_in = (1 << EventKind::ALL.len()) - 1;
        self
    }

    /// Adds every phase smtpd queries (all but `help` and `wiz`, which it never does).
    pub fn all_phases(self) -> Interest {
        Phase::ALL
            .into_iter()
            .filter(|p| !matches!(p, Phase::Help | Phase::Wiz))
            .fold(self, Interest::phase)
    }

    /// The union of two sets.
    pub const fn union(self, other: Interest) -> Interest {
        Interest {
            reports_in: self.reports_in | other.reports_in,
            reports_out: self.reports_out | other.reports_out,
            phases: self.phases | other.phases,
        }
    }

    /// Whether a report event of `subsystem` is registered.
    pub fn has_report(&self, subsystem: Subsystem, event: EventKind) -> bool {
        let bits = match subsystem {
            Subsystem::SmtpIn => self.reports_in,
            Subsystem::SmtpOut => self.reports_out,
        };
        bits & (1 << event as u32) != 0
    }

    /// Whether a phase is registered.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases & (1 << phase as u32) != 0
    }

    /// The registration lines, `register|ready` last, each ending in `\n`.
    pub fn registration(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (subsystem, bits) in [
            (Subsystem::SmtpIn, self.reports_in),
            (Subsystem::SmtpOut, self.reports_out),
        ] {
            for event in EventKind::ALL
                .into_iter()
                .filter(|e| bits & (1 << *e as u32) != 0)
            {
                out.extend_from_slice(format!("register|report|{subsystem}|{event}\n").as_bytes());
            }
        }
        for phase in Phase::ALL.into_iter().filter(|p| self.has_phase(*p)) {
            out.extend_from_slice(format!("register|filter|smtp-in|{phase}\n").as_bytes());
        }
        out.extend_from_slice(b"register|ready\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_line_brings_commit() {
        let i = Interest::new()
            .phase(Phase::DataLine)
            .report(EventKind::TxBegin);
        assert!(i.has_phase(Phase::Commit));
        assert_eq!(
            String::from_utf8(i.registration()).unwrap(),
            "register|report|smtp-in|tx-begin\nregister|filter|smtp-in|data-line\n\
             register|filter|smtp-in|commit\nregister|ready\n"
        );
        assert_eq!(Interest::new().registration(), b"register|ready\n");
    }

    #[test]
    fn all() {
        let i = Interest::new()
            .all_reports()
            .all_phases()
            .report_out(EventKind::LinkConnect);
        let text = String::from_utf8(i.registration()).unwrap();
        assert_eq!(text.lines().count(), 19 + 1 + 13 + 1);
        assert!(!text.contains("|help") && !text.contains("|wiz") && !text.contains("|*"));
        assert!(text.contains("register|report|smtp-out|link-connect\n"));
    }
}
