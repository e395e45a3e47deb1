//! Small private helpers: running `ip`/`kill`, scanning `/proc`, text tails.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Formats `n` in lowercase base 36 (digits then letters).
pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".to_string();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Parses a lowercase base-36 number as produced by [`base36`].
pub(crate) fn parse_base36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    u64::from_str_radix(s, 36).ok()
}

/// Runs a command to completion, returning stdout; fails with stderr on non-zero exit.
pub(crate) fn run_checked<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let shown = display_cmdline(OsStr::new(program), &args);
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to execute `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...` and fails with its stderr if it exits non-zero.
pub(crate) fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_checked("ip", args)
}

/// Sends `sig` (a name such as `TERM`) to `target`, which is a pid or `-pgid`.
pub(crate) fn kill(sig: &str, target: &str) -> Result<()> {
    run_checked("kill", ["-s", sig, "--", target]).map(|_| ())
}

/// Quotes a command line for human consumption (logs, error messages).
pub(crate) fn display_cmdline(program: &OsStr, args: &[std::ffi::OsString]) -> String {
    let mut s = shell_quote(&program.to_string_lossy());
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(&a.to_string_lossy()));
    }
    s
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '@' | '+')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Process groups that still contain at least one process that is not a zombie.
///
/// Used to decide whether signalling `-pgid` is still meaningful (and safe: a
/// process-group id cannot be reused while any member, even a zombie, exists).
pub(crate) fn live_process_groups() -> HashSet<u32> {
    let mut groups = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let _ppid = fields.next();
        let Some(pgrp) = fields.next().and_then(|f| f.parse::<u32>().ok()) else {
            continue;
        };
        if state != "Z" && state != "X" {
            groups.insert(pgrp);
        }
    }
    groups
}

/// The process-group id of `pid`, if it exists.
pub(crate) fn process_group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(2)?.parse().ok()
}

/// Whether a process with this pid currently exists (in our pid namespace).
pub(crate) fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Effective uid of this process, read from `/proc/self/status`.
pub(crate) fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Finds an executable named `tool` in `$PATH`.
pub(crate) fn find_in_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The last `n` lines of `text`, plus a note about how many lines were omitted.
pub(crate) fn tail_lines(text: &str, n: usize) -> (usize, &str) {
    let total = text.lines().count();
    if total <= n {
        return (0, text);
    }
    let skip = total - n;
    // Byte offset just after the `skip`-th newline.
    let mut offset = 0;
    for (i, (pos, _)) in text.match_indices('\n').enumerate() {
        if i + 1 == skip {
            offset = pos + 1;
            break;
        }
    }
    (skip, &text[offset..])
}

/// Truncates `s` to at most `max` bytes (on a char boundary), marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} more bytes]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_roundtrip() {
        for n in [0u64, 1, 35, 36, 12345, 4_194_304, u32::MAX as u64] {
            assert_eq!(parse_base36(&base36(n)), Some(n));
        }
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn tail() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), (1, "b\nc\n"));
        assert_eq!(tail_lines("a\nb", 5), (0, "a\nb"));
        assert_eq!(tail_lines("a\nb\nc", 1), (2, "c"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 2), "he... [3 more bytes]");
    }
}
