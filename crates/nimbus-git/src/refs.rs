//! Ref snapshots and the ref advertisements built from them.
//!
//! A snapshot is read once through `gix` and then answers every `info/refs` (protocol v0) and
//! `ls-refs` (protocol v2) request in-process until a push invalidates it. The capability lists
//! are taken once at start-up from the installed `git`, so what we advertise always matches the
//! `git upload-pack`/`git receive-pack` that does the pack work.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::error::Error;
use crate::pktline;

const ZERO_OID: &str = "0000000000000000000000000000000000000000";

/// Configuration every pack child runs with (and the capability probe, so they agree).
pub const GIT_CONFIG: &[&str] = &[
    "uploadpack.allowFilter=true",
    "uploadpack.allowReachableSHA1InWant=true",
    "uploadpack.allowAnySHA1InWant=true",
    "receive.autogc=false",
    "receive.denyNonFastForwards=false",
    "receive.denyDeletes=false",
    "core.logAllRefUpdates=false",
];

/// Capabilities of the installed git, probed once.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub upload_v0: String,
    pub receive_v0: String,
    /// The whole protocol v2 capability advertisement, pkt-line framed.
    pub upload_v2: Bytes,
}

static ISOLATE_GIT_CONFIG: AtomicBool = AtomicBool::new(false);

/// Make every git child ignore the system and global git configuration (tests use this so the
/// machine's `~/.gitconfig` cannot change what the server does). Process-wide.
pub fn isolate_git_config() {
    ISOLATE_GIT_CONFIG.store(true, Ordering::Relaxed);
}

pub fn git_command(git_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    // Children need none of the server's secrets.
    cmd.env_remove("NIMBUS_GIT_OWNER_PASSWORD")
        .env_remove("NIMBUS_GIT_DATABASE_URL");
    if ISOLATE_GIT_CONFIG.load(Ordering::Relaxed) {
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
    }
    for kv in GIT_CONFIG {
        cmd.arg("-c").arg(kv);
    }
    if let Some(dir) = git_dir {
        cmd.arg("--git-dir").arg(dir);
    }
    cmd
}

impl Capabilities {
    pub fn probe(scratch: &Path) -> Result<Capabilities, Error> {
        // One commit on main: git before 2.41 advertises no capabilities for an empty repository.
        let repo = scratch.join("capability-probe-v1.git");
        if !repo.exists() {
            run(git_command(None)
                .args(["init", "--bare", "-q", "-b", "main"])
                .arg(&repo))?;
            let tree = run(git_command(Some(&repo))
                .args(["hash-object", "-t", "tree", "-w", "--stdin"])
                .stdin(Stdio::null()))?;
            let tree = String::from_utf8_lossy(&tree).trim().to_owned();
            let commit = run(git_command(Some(&repo))
                .args([
                    "-c",
                    "user.name=nimbus-git",
                    "-c",
                    "user.email=nimbus-git@localhost",
                ])
                .args(["commit-tree", &tree, "-m", "capability probe"]))?;
            let commit = String::from_utf8_lossy(&commit).trim().to_owned();
            run(git_command(Some(&repo)).args(["update-ref", "refs/heads/main", &commit]))?;
        }
        let first_caps = |out: Vec<u8>| -> Result<String, Error> {
            let Ok(Some((pktline::Pkt::Data(line), _))) = pktline::parse(&out) else {
                return Err(Error::Git("capability probe: no advertisement".into()));
            };
            let line = String::from_utf8_lossy(pktline::text(line)).into_owned();
            let caps = line
                .split_once('\0')
                .map(|(_, caps)| caps)
                .unwrap_or_default();
            Ok(caps
                .split(' ')
                .filter(|c| !c.starts_with("symref="))
                .collect::<Vec<_>>()
                .join(" "))
        };
        let upload = run(git_command(None)
            .args(["upload-pack", "--advertise-refs", "--stateless-rpc"])
            .arg(&repo))?;
        let receive = run(git_command(None)
            .args(["receive-pack", "--advertise-refs", "--stateless-rpc"])
            .arg(&repo))?;
        let v2 = run(git_command(None)
            .env("GIT_PROTOCOL", "version=2")
            .args(["upload-pack", "--advertise-refs", "--stateless-rpc"])
            .arg(&repo))?;
        if !v2.windows(9).any(|w| w == b"version 2") {
            return Err(Error::Git(
                "installed git does not speak protocol v2".into(),
            ));
        }
        Ok(Capabilities {
            upload_v0: first_caps(upload)?,
            receive_v0: first_caps(receive)?,
            upload_v2: Bytes::from(v2),
        })
    }
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, Error> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(Error::Git(format!(
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    pub name: String,
    pub oid: String,
    /// The object an annotated tag finally points to.
    pub peeled: Option<String>,
}

/// All refs of one repository at one moment, with the advertisements pre-rendered.
#[derive(Debug)]
pub struct Snapshot {
    pub head_target: Option<String>,
    pub head_oid: Option<String>,
    pub refs: Vec<RefEntry>,
    pub upload_v0: Bytes,
    pub receive_v0: Bytes,
}

impl Snapshot {
    pub fn read(repo: &gix::Repository, caps: &Capabilities) -> Result<Snapshot, Error> {
        let mut refs = Vec::new();
        let platform = repo.references().map_err(Error::git)?;
        for reference in platform.all().map_err(Error::git)? {
            let mut reference = reference.map_err(Error::git)?;
            let Some(id) = reference.try_id() else {
                continue;
            };
            let oid = id.to_string();
            let name = reference.name().as_bstr().to_string();
            let peeled = if name.starts_with("refs/tags/") {
                let peeled = reference.peel_to_id().map_err(Error::git)?.to_string();
                (peeled != oid).then_some(peeled)
            } else {
                None
            };
            refs.push(RefEntry { name, oid, peeled });
        }
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        let head_target = repo
            .head_name()
            .map_err(Error::git)?
            .map(|n| n.as_bstr().to_string());
        let head_oid = head_target
            .as_ref()
            .and_then(|t| refs.iter().find(|r| &r.name == t))
            .map(|r| r.oid.clone());
        Ok(Snapshot::new(head_target, head_oid, refs, caps))
    }

    pub fn new(
        head_target: Option<String>,
        head_oid: Option<String>,
        refs: Vec<RefEntry>,
        caps: &Capabilities,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            head_target,
            head_oid,
            refs,
            upload_v0: Bytes::new(),
            receive_v0: Bytes::new(),
        };
        snapshot.upload_v0 = snapshot.render_v0(true, caps);
        snapshot.receive_v0 = snapshot.render_v0(false, caps);
        snapshot
    }

    fn render_v0(&self, upload: bool, caps: &Capabilities) -> Bytes {
        let service = if upload {
            "git-upload-pack"
        } else {
            "git-receive-pack"
        };
        let mut out = Vec::with_capacity(64 + self.refs.len() * 70);
        pktline::write_str(&mut out, &format!("# service={service}\n"));
        pktline::flush(&mut out);
        let mut caps_line = if upload {
            caps.upload_v0.clone()
        } else {
            caps.receive_v0.clone()
        };
        if upload && let (Some(target), Some(_)) = (&self.head_target, &self.head_oid) {
            caps_line = format!("{caps_line} symref=HEAD:{target}");
        }
        let mut lines: Vec<(String, String)> = Vec::new();
        if upload && let Some(oid) = &self.head_oid {
            lines.push((oid.clone(), "HEAD".into()));
        }
        for r in &self.refs {
            lines.push((r.oid.clone(), r.name.clone()));
            if upload && let Some(peeled) = &r.peeled {
                lines.push((peeled.clone(), format!("{}^{{}}", r.name)));
            }
        }
        if lines.is_empty() {
            lines.push((ZERO_OID.into(), "capabilities^{}".into()));
        }
        for (idx, (oid, name)) in lines.iter().enumerate() {
            let mut line = Vec::with_capacity(oid.len() + name.len() + caps_line.len() + 4);
            line.extend_from_slice(oid.as_bytes());
            line.push(b' ');
            line.extend_from_slice(name.as_bytes());
            if idx == 0 {
                line.push(0);
                line.extend_from_slice(caps_line.as_bytes());
            }
            line.push(b'\n');
            pktline::write(&mut out, &line);
        }
        pktline::flush(&mut out);
        Bytes::from(out)
    }

    /// Answer a protocol v2 `ls-refs` command from its argument lines.
    pub fn ls_refs(&self, args: &[&[u8]]) -> Bytes {
        let mut symrefs = false;
        let mut peel = false;
        let mut unborn = false;
        let mut prefixes: Vec<&[u8]> = Vec::new();
        for arg in args {
            match *arg {
                b"symrefs" => symrefs = true,
                b"peel" => peel = true,
                b"unborn" => unborn = true,
                other => {
                    if let Some(prefix) = other.strip_prefix(b"ref-prefix ") {
                        prefixes.push(prefix);
                    }
                }
            }
        }
        let wanted = |name: &str| {
            prefixes.is_empty() || prefixes.iter().any(|p| name.as_bytes().starts_with(p))
        };
        let mut out = Vec::with_capacity(self.refs.len() * 70);
        if wanted("HEAD") {
            match (&self.head_oid, &self.head_target) {
                (Some(oid), Some(target)) => {
                    let line = if symrefs {
                        format!("{oid} HEAD symref-target:{target}\n")
                    } else {
                        format!("{oid} HEAD\n")
                    };
                    pktline::write_str(&mut out, &line);
                }
                (None, Some(target)) if unborn => {
                    pktline::write_str(&mut out, &format!("unborn HEAD symref-target:{target}\n"));
                }
                _ => {}
            }
        }
        for r in self.refs.iter().filter(|r| wanted(&r.name)) {
            let line = match (&r.peeled, peel) {
                (Some(peeled), true) => format!("{} {} peeled:{peeled}\n", r.oid, r.name),
                _ => format!("{} {}\n", r.oid, r.name),
            };
            pktline::write_str(&mut out, &line);
        }
        pktline::flush(&mut out);
        Bytes::from(out)
    }

    pub fn get(&self, name: &str) -> Option<&RefEntry> {
        self.refs
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|idx| &self.refs[idx])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            upload_v0: "ofs-delta".into(),
            receive_v0: "report-status".into(),
            upload_v2: Bytes::new(),
        }
    }

    #[test]
    fn empty_repo_advertises_capabilities_line() {
        let s = Snapshot::new(Some("refs/heads/main".into()), None, vec![], &caps());
        let text = String::from_utf8_lossy(&s.upload_v0).into_owned();
        assert!(
            text.contains(&format!("{ZERO_OID} capabilities^{{}}\0ofs-delta\n")),
            "{text:?}"
        );
    }

    #[test]
    fn ls_refs_filters_and_peels() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let refs = vec![
            RefEntry {
                name: "refs/heads/main".into(),
                oid: a.clone(),
                peeled: None,
            },
            RefEntry {
                name: "refs/tags/v1".into(),
                oid: b.clone(),
                peeled: Some(a.clone()),
            },
        ];
        let s = Snapshot::new(
            Some("refs/heads/main".into()),
            Some(a.clone()),
            refs,
            &caps(),
        );
        let out = s.ls_refs(&[b"peel", b"symrefs", b"ref-prefix refs/tags/"]);
        let mut expect = Vec::new();
        pktline::write_str(&mut expect, &format!("{b} refs/tags/v1 peeled:{a}\n"));
        pktline::flush(&mut expect);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expect)
        );
        let out = s.ls_refs(&[b"symrefs", b"ref-prefix HEAD"]);
        let mut expect = Vec::new();
        pktline::write_str(
            &mut expect,
            &format!("{a} HEAD symref-target:refs/heads/main\n"),
        );
        pktline::flush(&mut expect);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expect)
        );
        let v0 = String::from_utf8_lossy(&s.upload_v0).into_owned();
        assert!(v0.contains(&format!("{a} refs/tags/v1^{{}}\n")), "{v0}");
        let v0r = String::from_utf8_lossy(&s.receive_v0).into_owned();
        assert!(!v0r.contains("^{}") && !v0r.contains("HEAD"), "{v0r}");
    }
}
