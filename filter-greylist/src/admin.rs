//! The admin command, `filter-greylist admin …`: look at and change the state in the
//! same store the filter uses.
//!
//! ```text
//! filter-greylist admin [--store PATH|redis://…] list [--json]
//! filter-greylist admin [--store …] allow ADDRESS|CIDR|DOMAIN
//! filter-greylist admin [--store …] remove ADDRESS|CIDR|DOMAIN|KEY
//! filter-greylist admin [--store …] explain CLIENT SENDER RECIPIENT [--spf RESULT]
//! ```
//!
//! A Redis store can be used while filters run. The embedded store is a single-writer
//! file: while the filter holds it, the command waits 10 s and then says so.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::policy::{
    Attempt, Entry, Found, Grouping, Key, Outcome, Reason, Spf, Time, Timing, Verdict, client_net,
    decide, lookup,
};
use crate::redis_store::RedisStore;
use crate::store::{DEFAULT_PATH, RedbStore, Store, StoreError};

#[derive(Parser, Debug)]
#[command(
    name = "filter-greylist admin",
    about = "Look at and change filter-greylist's state (the same store as the filter)."
)]
struct AdminCli {
    /// The store: a file path or redis://HOST:PORT/DB.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH, global = true)]
    store: String,

    /// The white expiry given to `allow` entries.
    #[arg(long, value_name = "DURATION", default_value = "30d", global = true)]
    whiteexp: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every grey, white and trap entry: first and last seen, count, expiry (local time).
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Whitelist an address or network (its client network) or a domain (SPF-pass mail) now.
    Allow {
        /// ADDRESS, CIDR or DOMAIN.
        what: String,
    },
    /// Remove the whitelist and trap entries of an address, network or domain.
    Remove {
        /// ADDRESS, CIDR or DOMAIN.
        what: String,
    },
    /// Say what the filter would answer to CLIENT sending from SENDER to RECIPIENT now.
    Explain {
        /// The client address.
        client: IpAddr,
        /// The sender (empty for the null sender).
        sender: String,
        /// The recipient.
        rcpt: String,
        /// The SPF result to assume (pass, fail, none, …).
        #[arg(long, default_value = "none")]
        spf: String,
        /// The HELO name (keys the null sender).
        #[arg(long, default_value = "")]
        helo: String,
    },
}

/// What the filter's `main` does with `filter-greylist admin …`: runs it and returns
/// the text for stdout, or an error for stderr.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Result<String, String> {
    let cli = match AdminCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(e.render().to_string()),
                _ => Err(e.render().to_string()),
            };
        }
    };
    let white_exp = crate::config::parse_duration(&cli.whiteexp)
        .ok_or_else(|| format!("--whiteexp {:?}: not a duration", cli.whiteexp))?
        .as_secs();
    let store: Box<dyn Store> = if cli.store.starts_with("redis://") {
        Box::new(RedisStore::new(&cli.store)?)
    } else {
        let path = Path::new(&cli.store);
        if !path.exists() {
            return Err(format!("store {}: no such file", path.display()));
        }
        Box::new(RedbStore::open(path).map_err(|e| e.to_string())?)
    };
    let timing = Timing {
        white_exp,
        ..Timing::default()
    };
    execute(store.as_ref(), cli.command, &timing, now()).map_err(|e| e.to_string())
}

fn now() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The keys an ADDRESS, CIDR or DOMAIN names.
fn keys_of(what: &str) -> Result<Vec<Key>, String> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(vec![
            Key::WhiteNet(client_net(ip, Grouping::Network)),
            Key::WhiteNet(client_net(ip, Grouping::Exact)),
            Key::Trap(client_net(ip, Grouping::Exact)),
        ]);
    }
    if let Ok(net) = what.parse::<IpNet>() {
        return Ok(vec![Key::WhiteNet(net.trunc()), Key::Trap(net.trunc())]);
    }
    let domain = what.trim_end_matches('.').to_ascii_lowercase();
    if !domain.is_empty()
        && domain.contains('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Ok(vec![Key::WhiteDomain(domain)]);
    }
    Err(format!("{what:?} is not an address, a network or a domain"))
}

/// Reads the entries of `lookup` without changing anything.
fn peek(store: &dyn Store, lookup: &crate::policy::Lookup) -> Result<Found, StoreError> {
    let seen = Mutex::new(None);
    store.decide(lookup, &|found| {
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(found.clone());
        Outcome {
            verdict: Verdict::Accept,
            reason: Reason::FirstAttempt,
            changes: Vec::new(),
        }
    })?;
    Ok(seen
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default())
}

fn parse_spf(text: &str) -> Result<Spf, String> {
    Ok(match text {
        "pass" => Spf::Pass,
        "fail" => Spf::Fail,
        "softfail" => Spf::SoftFail,
        "neutral" => Spf::Neutral,
        "none" => Spf::None,
        "temperror" => Spf::TempError,
        "permerror" => Spf::PermError,
        _ => {
            return Err(format!(
                "--spf {text:?}: pass, fail, softfail, neutral, none, temperror or permerror"
            ));
        }
    })
}

fn execute(
    store: &dyn Store,
    command: Command,
    timing: &Timing,
    now: Time,
) -> Result<String, String> {
    let e = |e: StoreError| e.to_string();
    match command {
        Command::List { json } => {
            let entries = store.entries().map_err(e)?;
            Ok(if json {
                list_json(&entries)
            } else {
                list_table(&entries)
            })
        }
        Command::Allow { what } => {
            let key = keys_of(&what)?.remove(0);
            store.whitelist(&key, timing, now).map_err(e)?;
            Ok(format!("allowed: {key}\n"))
        }
        Command::Remove { what } => {
            let mut out = String::new();
            for key in keys_of(&what)? {
                let l = crate::policy::Lookup {
                    white: vec![key.clone()],
                    grey: key.clone(),
                    trap: key.clone(),
                };
                let removed = store
                    .decide(&l, &|found| Outcome {
                        verdict: Verdict::Accept,
                        reason: Reason::FirstAttempt,
                        changes: if found.grey.is_some() {
                            vec![crate::policy::Change::Delete(key.clone())]
                        } else {
                            Vec::new()
                        },
                    })
                    .map_err(e)?;
                if !removed.changes.is_empty() {
                    let _ = writeln!(out, "removed: {key}");
                }
            }
            if out.is_empty() {
                out = format!("nothing stored for {what}\n");
            }
            Ok(out)
        }
        Command::Explain {
            client,
            sender,
            rcpt,
            spf,
            helo,
        } => {
            let attempt = Attempt {
                client,
                sender: sender.to_lowercase(),
                helo: helo.to_lowercase(),
                rcpt: rcpt.to_lowercase(),
                spf: parse_spf(&spf)?,
                trap: false,
            };
            let l = lookup(&attempt, Grouping::Network);
            let found = peek(store, &l).map_err(e)?;
            let outcome = decide(timing, &l, &found, now, false);
            let mut out = String::new();
            let _ = writeln!(out, "grey key:  {}", l.grey);
            let show = |e: &Option<Entry>| match e {
                Some(e) if !e.expired(now) => format!(
                    "first seen {}, last seen {}, count {}, expires {}",
                    local(e.first_seen),
                    local(e.last_seen),
                    e.count,
                    local(e.expires)
                ),
                Some(_) => "expired".into(),
                None => "none".into(),
            };
            let _ = writeln!(out, "  entry:   {}", show(&found.grey));
            for (k, f) in l.white.iter().zip(&found.white) {
                let _ = writeln!(out, "white key: {k}\n  entry:   {}", show(f));
            }
            let _ = writeln!(
                out,
                "trap key:  {}\n  entry:   {}",
                l.trap,
                show(&found.trap)
            );
            let _ = writeln!(
                out,
                "now: {} ({}) (pass time {} s)",
                outcome.verdict.word(),
                outcome.reason,
                timing.pass
            );
            Ok(out)
        }
    }
}

/// A time as local date and time.
pub fn local(t: Time) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(t as i64, 0) {
        chrono::LocalResult::Single(d) | chrono::LocalResult::Ambiguous(d, _) => {
            d.format("%Y-%m-%d %H:%M:%S").to_string()
        }
        chrono::LocalResult::None => t.to_string(),
    }
}

fn kind(k: &Key) -> &'static str {
    match k {
        Key::Grey { .. } => "grey",
        Key::WhiteNet(_) | Key::WhiteDomain(_) => "white",
        Key::Trap(_) => "trap",
    }
}

/// An aligned table, one entry per line.
pub fn list_table(entries: &[(Key, Entry)]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|(k, e)| {
            [
                kind(k).to_string(),
                k.to_string(),
                local(e.first_seen),
                local(e.last_seen),
                e.count.to_string(),
                local(e.expires),
            ]
        })
        .collect();
    let head = ["KIND", "KEY", "FIRST SEEN", "LAST SEEN", "COUNT", "EXPIRES"].map(String::from);
    let mut width = head.each_ref().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(width).enumerate() {
            if i == 4 {
                let _ = write!(line, "{c:>w$}  ");
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON object per line.
pub fn list_json(entries: &[(Key, Entry)]) -> String {
    let mut out = String::new();
    for (k, e) in entries {
        let _ = writeln!(
            out,
            "{{\"kind\":{},\"key\":{},\"first_seen\":{},\"last_seen\":{},\"count\":{},\"expires\":{}}}",
            json_str(kind(k)),
            json_str(&k.to_string()),
            e.first_seen,
            e.last_seen,
            e.count,
            e.expires
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const T0: Time = 1_700_000_000;

    fn cmd(args: &[&str]) -> Command {
        let all = ["admin", "--store", "memory"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect::<Vec<_>>();
        AdminCli::try_parse_from(all).unwrap().command
    }

    #[test]
    fn allow_list_explain_remove() {
        let store = MemoryStore::new();
        let t = Timing::default();
        let out = execute(&store, cmd(&["allow", "192.0.2.7"]), &t, T0).unwrap();
        assert_eq!(out, "allowed: white-net:192.0.2.0/24\n");
        execute(&store, cmd(&["allow", "Pool.Example."]), &t, T0).unwrap();
        let table = execute(&store, cmd(&["list"]), &t, T0).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("KIND   KEY"), "{table}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("white-domain:pool.example"))
        );
        // the columns line up
        let col = |l: &str| l.find("20").unwrap();
        assert_eq!(col(lines[1]), col(lines[2]));
        let json = execute(&store, cmd(&["list", "--json"]), &t, T0).unwrap();
        assert!(json.contains(&format!(
            "{{\"kind\":\"white\",\"key\":\"white-net:192.0.2.0/24\",\"first_seen\":{T0},\"last_seen\":{T0},\"count\":1,\"expires\":{}}}",
            T0 + t.white_exp
        )), "{json}");
        let why = execute(
            &store,
            cmd(&["explain", "192.0.2.99", "a@x.example", "u@lab.test"]),
            &t,
            T0 + 5,
        )
        .unwrap();
        assert!(
            why.contains("now: accept (whitelisted(white-net:192.0.2.0/24))"),
            "{why}"
        );
        let why = execute(
            &store,
            cmd(&[
                "explain",
                "198.51.100.1",
                "a@x.example",
                "u@lab.test",
                "--spf",
                "fail",
            ]),
            &t,
            T0 + 5,
        )
        .unwrap();
        assert!(why.contains("now: tempfail (first-attempt)"), "{why}");
        assert!(
            execute(&store, cmd(&["list"]), &t, T0)
                .unwrap()
                .lines()
                .count()
                == 3,
            "explain writes nothing"
        );
        let out = execute(&store, cmd(&["remove", "192.0.2.7"]), &t, T0).unwrap();
        assert_eq!(out, "removed: white-net:192.0.2.0/24\n");
        let out = execute(&store, cmd(&["remove", "192.0.2.7"]), &t, T0).unwrap();
        assert_eq!(out, "nothing stored for 192.0.2.7\n");
        assert!(keys_of("not a thing").is_err());
    }
}
