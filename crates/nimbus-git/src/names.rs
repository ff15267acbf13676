//! Validation of repository and user names: they become paths and URL segments.

/// Names that would collide with routes or mean something else on disk.
const RESERVED: &[&str] = &[
    "api",
    "static",
    "assets",
    "login",
    "logout",
    "settings",
    "users",
    "user",
    "admin",
    "new",
    "health",
    "healthz",
    "metrics",
    "favicon.ico",
    "robots.txt",
    "info",
    "objects",
    "refs",
    "hooks",
    "head",
    "git",
    "repos",
];

/// Why a name was refused; shown to the user next to the field name.
pub fn check_repo_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, '-', '_' and '.'".into());
    }
    if name.starts_with(['.', '-']) {
        return Err("must not start with '.' or '-'".into());
    }
    if name.contains("..") {
        return Err("must not contain '..'".into());
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".git") {
        return Err("must not end with '.git' (the clone URL adds it)".into());
    }
    if lower.ends_with(".lock") {
        return Err("must not end with '.lock'".into());
    }
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!("'{name}' is reserved"));
    }
    Ok(())
}

pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, '-', '_' and '.'".into());
    }
    if name.starts_with(['.', '-']) {
        return Err("must not start with '.' or '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool) {
        let got = check_repo_name(name);
        assert_eq!(got.is_ok(), ok, "name {name:?}: {got:?}");
    }

    #[test]
    fn repo_names() {
        for good in ["nimbus", "a", "my-repo_2", "v1.2", "A.b-c"] {
            check(good, true);
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "..",
            ".hidden",
            "-x",
            "x.git",
            "API",
            "info",
            "a..b",
            "x y",
            "é",
            "a\0b",
            "x.lock",
            &"a".repeat(101),
        ] {
            check(bad, false);
        }
    }
}
