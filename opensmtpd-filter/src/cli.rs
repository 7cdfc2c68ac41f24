//! Command lines compatible with the Go filters (poolpOrg's framework), whose flags are
//! single-dash long names (`-blockBelow 50`, `-url X`): existing smtpd.conf lines must
//! keep working when a Rust filter replaces a Go one. Pure; no dependency.

use std::ffi::OsString;

/// Rewrites single-dash long flags into GNU style so that a GNU-style parser (clap) can
/// read both spellings: `-name value` → `--NAME=value`, `-name=value` →
/// `--NAME=value`, `-flag` → `--NAME`, where NAME is `rename(name)` (e.g. camelCase to
/// kebab case). `value_flags` lists the (renamed) flags that take a value: the argument
/// after one is its value, kept as it is even if it starts with `-`. The program name,
/// short flags (`-h`, `-v`), negative numbers, non-UTF-8 arguments and everything after
/// `--` are left alone.
///
/// ```
/// use opensmtpd_filter::cli::gnu_style_args;
/// let args = ["f", "-blockBelow", "-1", "-scoreHeader", "-h"].map(Into::into);
/// let out = gnu_style_args(args, &["block-below"], |n| n.replace("Below", "-below").to_lowercase());
/// assert_eq!(out, ["f", "--block-below=-1", "--scoreheader", "-h"].map(std::ffi::OsString::from));
/// ```
pub fn gnu_style_args<I: IntoIterator<Item = OsString>>(
    args: I,
    value_flags: &[&str],
    rename: impl Fn(&str) -> String,
) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut rest_verbatim = false;
    let mut pending: Option<String> = None;
    for arg in iter {
        if rest_verbatim {
            out.push(arg);
            continue;
        }
        if let Some(flag) = pending.take() {
            let mut joined = OsString::from(format!("--{flag}="));
            joined.push(&arg);
            out.push(joined);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        let body = if let Some(b) = text.strip_prefix("--") {
            b
        } else if let Some(b) = text.strip_prefix('-') {
            // `-h`, `-v` and negative numbers stay as they are
            if b.chars().count() < 2 || !b.starts_with(|c: char| c.is_ascii_alphabetic()) {
                out.push(arg);
                continue;
            }
            b
        } else {
            out.push(arg);
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let name = rename(name);
        match value {
            Some(v) => out.push(OsString::from(format!("--{name}={v}"))),
            None if value_flags.contains(&name.as_str()) => pending = Some(name),
            None => out.push(OsString::from(format!("--{name}"))),
        }
    }
    if let Some(flag) = pending {
        // a value flag at the end without its value: let the parser say so
        out.push(OsString::from(format!("--{flag}")));
    }
    out
}

/// `blockBelow` → `block-below`; names already in kebab case are unchanged.
pub fn kebab_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('-') {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], value_flags: &[&str]) -> Vec<String> {
        let args = std::iter::once("prog")
            .chain(args.iter().copied())
            .map(OsString::from);
        gnu_style_args(args, value_flags, kebab_case)
            .into_iter()
            .skip(1)
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rewrites_go_flags_and_keeps_the_rest() {
        assert_eq!(
            run(
                &[
                    "-blockBelow",
                    "-5",
                    "-x",
                    "--junk-below=3",
                    "-testMode",
                    "--",
                    "-keep"
                ],
                &["block-below"]
            ),
            [
                "--block-below=-5",
                "-x",
                "--junk-below=3",
                "--test-mode",
                "--",
                "-keep"
            ]
        );
        assert_eq!(run(&["-blockBelow"], &["block-below"]), ["--block-below"]);
        assert_eq!(run(&["value", "-12"], &[]), ["value", "-12"]);
        assert_eq!(kebab_case("slowFactor"), "slow-factor");
        assert_eq!(kebab_case("wl-ip"), "wl-ip");
    }
}
