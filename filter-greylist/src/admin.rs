//! The admin command, `filter-greylist admin …`: look at and change the state in the
//! same store the filter uses.
//!
//! ```text
//! filter-greylist admin [--store PATH|redis://…] list [--json]
//! filter-greylist admin [--store …] allow ADDRESS|CIDR|DOMAIN
//! filter-greylist admin [--store …] remove ADDRESS|CIDR|DOMAIN|KEY
//! filter-greylist admin [--store …] explain CLIENT SENDER RECIPIENT [--spf RESULT]
//! filter-greylist admin [--store …] trap ADDRESS [--trap-time D] | untrap ADDRESS
//! filter-greylist admin [--store …] add-greytrap ADDRESS|DOMAIN | remove-greytrap ADDRESS|DOMAIN
//! ```
//!
//! A Redis store can be used while filters run. The embedded store is a single-process
//! file: while a filter holds it, the command goes through the filter's control socket
//! (see [`crate::control`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::policy::{
    Attempt, Change, Entry, Found, Grouping, Key, NEVER, Outcome, Reason, Spf, Time, Timing,
    Verdict, client_net, decide, lookup,
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

    /// How long `trap` traps a client.
    #[arg(long, value_name = "DURATION", default_value = "24h", global = true)]
    trap_time: String,

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
    /// Trap a client address now (as if it had written to a greytrap), for --trap-time.
    Trap {
        /// The client address.
        client: IpAddr,
    },
    /// Release a trapped client address.
    Untrap {
        /// The client address.
        client: IpAddr,
    },
    /// Make a recipient address, or every address of a domain, a greytrap: a client
    /// writing to it is trapped. Stored until removed; every filter sharing the store
    /// sees it at its next decision.
    AddGreytrap {
        /// ADDRESS or DOMAIN.
        what: String,
    },
    /// Remove a greytrap added with add-greytrap.
    RemoveGreytrap {
        /// ADDRESS or DOMAIN.
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

/// Parses the admin command line (`args` starts with `admin`).
fn parse(args: Vec<OsString>) -> Result<Result<AdminCli, String>, String> {
    match AdminCli::try_parse_from(args) {
        Ok(cli) => Ok(Ok(cli)),
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Err(e.render().to_string()))
                }
                _ => Err(e.render().to_string()),
            }
        }
    }
}

/// The timing the admin command writes with (`--whiteexp`, `--trap-time`).
fn timing_of(cli: &AdminCli) -> Result<Timing, String> {
    let white_exp = crate::config::parse_duration(&cli.whiteexp)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--whiteexp {:?}: not a duration", cli.whiteexp))?
        .as_secs();
    let trap = crate::config::parse_duration(&cli.trap_time)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--trap-time {:?}: not a duration", cli.trap_time))?
        .as_secs();
    Ok(Timing {
        white_exp,
        trap,
        ..Timing::default()
    })
}

/// What the filter's `main` does with `filter-greylist admin …`: runs it and returns
/// the text for stdout, or an error for stderr. On an embedded store, a filter that
/// serves the store's control socket is asked to do it; without one, the file is
/// opened directly.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Result<String, String> {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match parse(args.clone())? {
        Ok(cli) => cli,
        Err(help) => return Ok(help),
    };
    let store: Box<dyn Store> = if cli.store.starts_with("redis://") {
        Box::new(RedisStore::new(&cli.store)?)
    } else {
        let path = Path::new(&cli.store);
        let socket = crate::control::socket_path(path);
        if let crate::control::Asked::Answered(answer) =
            crate::control::ask(&socket, args.get(1..).unwrap_or_default())
        {
            return answer;
        }
        if !path.exists() {
            return Err(format!("store {}: no such file", path.display()));
        }
        Box::new(RedbStore::open(path).map_err(|e| e.to_string())?)
    };
    let timing = timing_of(&cli)?;
    execute(store.as_ref(), cli.command, &timing, now())
}

/// Runs the admin arguments `args` (what follows `admin`; `--store` is ignored) on
/// `store`: what the control socket does for a client.
pub fn execute_args(store: &dyn Store, args: Vec<OsString>) -> Result<String, String> {
    let all = std::iter::once(OsString::from("admin"))
        .chain(args)
        .collect();
    let cli = match parse(all)? {
        Ok(cli) => cli,
        Err(help) => return Ok(help),
    };
    let timing = timing_of(&cli)?;
    execute(store, cli.command, &timing, now())
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

/// The greytrap key of a recipient ADDRESS or DOMAIN (lower case).
fn greytrap_key(what: &str) -> Result<Key, String> {
    let text = what
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim_end_matches('.')
        .to_lowercase();
    let (local, domain) = match text.rsplit_once('@') {
        Some((l, d)) => (Some(l), d),
        None => (None, text.as_str()),
    };
    let domain_ok = domain.contains('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !domain.starts_with('.');
    let local_ok = local.is_none_or(|l| {
        !l.is_empty()
            && !l
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    });
    if domain_ok && local_ok {
        Ok(Key::Greytrap(text))
    } else {
        Err(format!("{what:?} is not a mail address or a domain"))
    }
}

/// Writes or deletes one key, saying whether anything changed.
fn set_one(
    store: &dyn Store,
    key: &Key,
    change: &dyn Fn(Option<Entry>) -> Option<crate::policy::Change>,
) -> Result<bool, StoreError> {
    let l = crate::policy::Lookup::single(key);
    let outcome = store.decide(&l, &|found| Outcome {
        verdict: Verdict::Accept,
        reason: Reason::FirstAttempt,
        changes: change(found.grey).into_iter().collect(),
    })?;
    Ok(!outcome.changes.is_empty())
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
                if set_one(store, &key, &|e| e.map(|_| Change::Delete(key.clone()))).map_err(e)? {
                    let _ = writeln!(out, "removed: {key}");
                }
            }
            if out.is_empty() {
                out = format!("nothing stored for {what}\n");
            }
            Ok(out)
        }
        Command::Trap { client } => {
            let key = Key::Trap(client_net(client, Grouping::Exact));
            let entry = Entry {
                first_seen: now,
                last_seen: now,
                count: 1,
                expires: now.saturating_add(timing.trap),
            };
            set_one(store, &key, &|_| Some(Change::Put(key.clone(), entry))).map_err(e)?;
            let mut out = format!("trapped: {key} until {}\n", local(entry.expires));
            // a whitelisted client is never trapped: say so rather than pretend
            let white = Key::WhiteNet(client_net(client, Grouping::Network));
            if peek(store, &crate::policy::Lookup::single(&white))
                .map_err(e)?
                .grey
                .is_some_and(|w| !w.expired(now))
            {
                let _ = writeln!(
                    out,
                    "note: {white} is whitelisted, which wins over the trap; `remove {client}` it to trap the client"
                );
            }
            Ok(out)
        }
        Command::Untrap { client } => {
            let key = Key::Trap(client_net(client, Grouping::Exact));
            Ok(
                if set_one(store, &key, &|e| e.map(|_| Change::Delete(key.clone()))).map_err(e)? {
                    format!("untrapped: {key}\n")
                } else {
                    format!("{client} is not trapped\n")
                },
            )
        }
        Command::AddGreytrap { what } => {
            let key = greytrap_key(&what)?;
            let entry = Entry {
                first_seen: now,
                last_seen: now,
                count: 1,
                expires: NEVER,
            };
            let added = set_one(store, &key, &|old| {
                old.is_none().then(|| Change::Put(key.clone(), entry))
            })
            .map_err(e)?;
            Ok(if added {
                format!("added: {key}\n")
            } else {
                format!("already there: {key}\n")
            })
        }
        Command::RemoveGreytrap { what } => {
            let key = greytrap_key(&what)?;
            Ok(
                if set_one(store, &key, &|e| e.map(|_| Change::Delete(key.clone()))).map_err(e)? {
                    format!("removed: {key}\n")
                } else {
                    format!("no greytrap {}\n", &key.to_string()["greytrap:".len()..])
                },
            )
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
            for (k, f) in l.greytraps.iter().zip(&found.greytraps) {
                let _ = writeln!(out, "greytrap:  {k}\n  entry:   {}", show(f));
            }
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
    if t == NEVER {
        return "never".into();
    }
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
        Key::Greytrap(_) => "greytrap",
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

    #[test]
    fn traps_and_greytraps() {
        let store = MemoryStore::new();
        let t = Timing {
            trap: 3600,
            ..Timing::default()
        };
        let run = |args: &[&str], now| execute(&store, cmd(args), &t, now).unwrap();
        assert_eq!(
            run(&["add-greytrap", "<Trap@Lab.Test>"], T0),
            "added: greytrap:trap@lab.test\n"
        );
        assert_eq!(
            run(&["add-greytrap", "trap@lab.test"], T0),
            "already there: greytrap:trap@lab.test\n"
        );
        run(&["add-greytrap", "spamtrap.test"], T0);
        assert!(execute(&store, cmd(&["add-greytrap", "not an address"]), &t, T0).is_err());
        assert!(execute(&store, cmd(&["add-greytrap", "@lab.test"]), &t, T0).is_err());
        let out = run(&["trap", "192.0.2.66"], T0);
        assert!(
            out.starts_with("trapped: trap:192.0.2.66/32 until "),
            "{out}"
        );
        assert!(!out.contains("note:"), "{out}");
        // listing shows them, greytraps never expire
        let table = run(&["list"], T0);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("greytrap  greytrap:trap@lab.test") && l.ends_with("never")),
            "{table}"
        );
        assert!(table.contains("greytrap:spamtrap.test"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("trap ") && l.contains("trap:192.0.2.66/32")),
            "{table}"
        );
        let json = run(&["list", "--json"], T0);
        assert!(
            json.contains(&format!(
                "{{\"kind\":\"greytrap\",\"key\":\"greytrap:trap@lab.test\",\"first_seen\":{T0},\"last_seen\":{T0},\"count\":1,\"expires\":{NEVER}}}"
            )),
            "{json}"
        );
        // explain: the trapped client, and a greytrap recipient for another client
        let why = run(
            &["explain", "192.0.2.66", "a@x.example", "u@lab.test"],
            T0 + 5,
        );
        assert!(
            why.contains("now: trapped (trapped(trap:192.0.2.66/32))"),
            "{why}"
        );
        let why = run(
            &["explain", "192.0.2.70", "a@x.example", "who@spamtrap.test"],
            T0,
        );
        assert!(why.contains("greytrap:  greytrap:spamtrap.test"), "{why}");
        assert!(why.contains("now: trapped (greytrap-hit("), "{why}");
        // the trap lasts --trap-time
        let why = run(
            &["explain", "192.0.2.66", "a@x.example", "u@lab.test"],
            T0 + 3600,
        );
        assert!(why.contains("now: tempfail (first-attempt)"), "{why}");
        assert_eq!(
            run(&["untrap", "192.0.2.66"], T0),
            "untrapped: trap:192.0.2.66/32\n"
        );
        assert_eq!(
            run(&["untrap", "192.0.2.66"], T0),
            "192.0.2.66 is not trapped\n"
        );
        assert_eq!(
            run(&["remove-greytrap", "TRAP@lab.test"], T0),
            "removed: greytrap:trap@lab.test\n"
        );
        assert_eq!(
            run(&["remove-greytrap", "trap@lab.test"], T0),
            "no greytrap trap@lab.test\n"
        );
        let left: Vec<_> = store
            .entries()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![Key::Greytrap("spamtrap.test".into())]);
        // trapping a whitelisted client says the whitelist wins
        run(&["allow", "198.51.100.9"], T0);
        let out = run(&["trap", "198.51.100.9"], T0);
        assert!(
            out.contains("note: white-net:198.51.100.0/24 is whitelisted"),
            "{out}"
        );
    }
}
