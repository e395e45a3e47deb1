//! The kuma-dp user: a uid, or a user name looked up in `/etc/passwd`.

/// Resolves a uid or user name to a uid. A number is taken as it is (it need not have a
/// passwd entry); a name must be in `/etc/passwd`.
pub fn resolve(user: &str) -> Result<u32, String> {
    let user = user.trim();
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    lookup(&passwd, user).ok_or_else(|| {
        format!(
            "the specified UID or username ('{user}') does not refer to a valid user on the host"
        )
    })
}

/// The uid of `name` in passwd-format `text`.
fn lookup(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nkuma-dp:x:5678:5678::/home:/bin/false\n";
        assert_eq!(lookup(passwd, "kuma-dp"), Some(5678));
        assert_eq!(lookup(passwd, "root"), Some(0));
        assert_eq!(lookup(passwd, "nobody-here"), None);
        assert_eq!(resolve("1234"), Ok(1234));
        assert_eq!(resolve("root"), Ok(0));
        assert!(resolve("no-such-user-xyz")
            .unwrap_err()
            .contains("('no-such-user-xyz')"));
    }
}
