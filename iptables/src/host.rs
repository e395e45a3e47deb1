//! Facts read from the host: effective uid, loopback interface, nameservers, IPv6 presence,
//! and running a program with its output captured.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The effective uid of this process (from `/proc/self/status`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Name of the loopback interface (the one flagged IFF_LOOPBACK), `lo` if none is found.
pub fn loopback_interface() -> String {
    const IFF_LOOPBACK: u32 = 0x8;
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return "lo".to_string();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("flags"))
                .ok()
                .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & IFF_LOOPBACK != 0)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next().unwrap_or_else(|| "lo".to_string())
}

/// The `nameserver` addresses of a resolv.conf.
pub fn nameservers(path: &Path) -> Result<Vec<IpAddr>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("unable to read file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect())
}

/// Whether any non-loopback IPv6 address is configured (as Kuma checks before IPv6 rules).
pub fn has_local_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|a| a != "00000000000000000000000000000001")
    })
}

/// Finds `name` in `$PATH` or the usual sbin folders.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `program args`, feeding `stdin`; returns stdout, or an error holding the command
/// and its stderr.
pub fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", shown.trim()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to `{}`: {e}", shown.trim()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{}`: {e}", shown.trim()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            shown.trim(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let dir = std::env::temp_dir().join(format!("bearing-resolv-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# c\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch x\nnameserver bad\n",
        )
        .unwrap();
        let ns = nameservers(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            ns,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(nameservers(Path::new("/nonexistent/resolv.conf"))
            .unwrap_err()
            .contains("unable to read file"));
        assert!(!loopback_interface().is_empty());
    }
}
