//! A real OpenSSH `sshd` on 127.0.0.1, standing in for a machine reached over SSH.
//!
//! Each [`Sshd`] has its own directory, port, host key and authorized client key (ed25519,
//! generated per instance). When the tests run as root, clients log in as the system user
//! [`TEST_USER`] (created on first use, with a home directory, unlocked with `usermod -p '*'`
//! because `UsePAM no` refuses locked accounts); otherwise sshd runs unprivileged and clients log
//! in as the current user. `StrictModes no` lets sshd accept keys that live under `/tmp`.
//!
//! Instances share one filesystem, so tests give every "host" its own directories under
//! [`Sshd::scratch_dir`], which the login user owns.
//!
//! [`Sshd::start_in_netns`] puts a daemon in a network namespace of its own, reached through a
//! veth pair on a private 10.200.0.0/16 /30 subnet that exists only on this machine: several
//! hosts with distinct addresses, all on port 22.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{free_port, require_program};

/// Waits until something accepts TCP connections on `address:port`.
fn wait_for(address: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let addr: std::net::SocketAddr = format!("{address}:{port}").parse()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("nothing listens on {address}:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The login user of test sshds when the tests run as root.
pub const TEST_USER: &str = "nimbus-test";

/// A running `sshd -D -e -f CFG` on 127.0.0.1; dropping it kills the daemon and removes its files.
pub struct Sshd {
    sshd: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    uid: u32,
    gid: u32,
    client_private_key: String,
    client_public_key: String,
    host_public_key: String,
    child: Option<Child>,
    netns: Option<Netns>,
}

/// A network namespace with a veth pair to the root namespace, removed on drop.
struct Netns {
    name: String,
    host_if: String,
    address: String,
    slot: PathBuf,
}

impl Netns {
    fn create() -> anyhow::Result<Netns> {
        require_program("ip", &["/usr/sbin/ip", "/sbin/ip"], "iproute2")?;
        if !is_root() {
            bail!("network namespaces for test hosts need root");
        }
        let (idx, slot) = claim_slot()?;
        let name = format!("nimbus-sshd-{idx}");
        let host_if = format!("nbh{idx}");
        let ns_if = format!("nbn{idx}");
        let (hi, lo) = (idx / 64, (idx % 64) * 4);
        let host_ip = format!("10.200.{hi}.{}", lo + 1);
        let address = format!("10.200.{hi}.{}", lo + 2);
        // Leftovers of a killed test run with the same slot.
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let netns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            address: address.clone(),
            slot,
        };
        let steps: [&[&str]; 8] = [
            &["netns", "add", &name],
            &["-n", &name, "link", "set", "lo", "up"],
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
            &["link", "set", &ns_if, "netns", &name],
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
            &["link", "set", &host_if, "up"],
            &[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{address}/30"),
                "dev",
                &ns_if,
            ],
            &["-n", &name, "link", "set", &ns_if, "up"],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output().context("run ip")?;
            if !out.status.success() {
                bail!(
                    "ip {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = fs::remove_file(&self.slot);
    }
}

/// A free /30 slot: a file created exclusively under the temp dir, holding the owner's pid; slots
/// of dead processes are taken over.
fn claim_slot() -> anyhow::Result<(u32, PathBuf)> {
    let dir = std::env::temp_dir().join("nimbus-netns-slots");
    fs::create_dir_all(&dir)?;
    for idx in 0..4096u32 {
        let path = dir.join(idx.to_string());
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                write!(file, "{}", std::process::id())?;
                return Ok((idx, path));
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&path).unwrap_or_default();
                let dead = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if dead
                    && fs::remove_file(&path).is_ok()
                    && let Ok(mut file) = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                {
                    use std::io::Write;
                    write!(file, "{}", std::process::id())?;
                    return Ok((idx, path));
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    bail!("no free network namespace slot under {}", dir.display())
}

impl Sshd {
    /// Starts a daemon on 127.0.0.1 and a free port with fresh host and client keys.
    pub fn start() -> anyhow::Result<Sshd> {
        Sshd::launch(None)
    }

    /// Starts a daemon in a network namespace of its own, on port 22 of an address only this
    /// machine routes (see the module docs). Needs root and iproute2.
    pub fn start_in_netns() -> anyhow::Result<Sshd> {
        Sshd::launch(Some(Netns::create()?))
    }

    fn launch(netns: Option<Netns>) -> anyhow::Result<Sshd> {
        let sshd = require_program("sshd", &["/usr/sbin/sshd"], "openssh-server")?;
        require_program("ssh-keygen", &["/usr/bin/ssh-keygen"], "openssh-client")?;
        let (user, uid, gid) = login_user()?;

        let dir = tempfile::Builder::new().prefix("nimbus-sshd-").tempdir()?;
        // The login user must reach the authorized keys file and its scratch directory.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch)?;
        std::os::unix::fs::chown(&scratch, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to {user}", scratch.display()))?;

        keygen(&dir.path().join("client_key"))?;
        keygen(&dir.path().join("host_key"))?;
        let client_private_key = fs::read_to_string(dir.path().join("client_key"))?;
        let client_public_key = fs::read_to_string(dir.path().join("client_key.pub"))?;
        let host_public_key = fs::read_to_string(dir.path().join("host_key.pub"))?;
        let authorized = dir.path().join("authorized_keys");
        fs::write(&authorized, &client_public_key)?;
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644))?;

        if is_root() {
            // Privilege separation needs its empty directory.
            fs::create_dir_all("/run/sshd").context("create /run/sshd")?;
        }

        let mut sshd = Sshd {
            sshd,
            dir,
            port: if netns.is_some() { 22 } else { free_port() },
            user,
            uid,
            gid,
            client_private_key,
            client_public_key: first_two_fields(&client_public_key),
            host_public_key: first_two_fields(&host_public_key),
            child: None,
            netns,
        };
        sshd.write_config()?;
        sshd.spawn()?;
        Ok(sshd)
    }

    pub fn address(&self) -> &str {
        self.netns
            .as_ref()
            .map_or("127.0.0.1", |netns| netns.address.as_str())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user clients log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The authorized client key, OpenSSH private key format (PEM-armoured text).
    pub fn client_private_key(&self) -> &str {
        &self.client_private_key
    }

    /// `ssh-ed25519 AAAA…` of the authorized client key.
    pub fn client_public_key(&self) -> &str {
        &self.client_public_key
    }

    /// `ssh-ed25519 AAAA…` of the key the daemon presents now.
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// Path of the client private key file (mode 0600), for the `ssh` CLI.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A directory owned by the login user, removed with the daemon.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// What the daemon logged so far (`-e` sends its log to stderr, kept in a file).
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(mut file) = fs::File::open(self.dir.path().join("sshd.log")) {
            let _ = file.read_to_string(&mut out);
        }
        out
    }

    /// Whether the daemon process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the daemon and the per-connection processes it forked: the port stops accepting
    /// connections and live sessions are cut.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pids = descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
            for pid in pids {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .output();
            }
        }
    }

    /// Stops the daemon without closing its socket (SIGSTOP): connections are accepted by the
    /// kernel but nothing answers, like a hung machine.
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-STOP")
                .arg(child.id().to_string())
                .output();
        }
    }

    /// Resumes a frozen daemon.
    pub fn thaw(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .output();
        }
    }

    /// Starts the daemon again on the same port with the same keys.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Replaces the host key with a new one and restarts: to clients that pinned the old key
    /// this looks like a man in the middle.
    pub fn rotate_host_key(&mut self) -> anyhow::Result<()> {
        self.stop();
        let key = self.dir.path().join("host_key");
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        keygen(&key)?;
        self.host_public_key = first_two_fields(&fs::read_to_string(key.with_extension("pub"))?);
        self.spawn()
    }

    /// The `ssh` CLI set up to log in to this daemon (`ssh … user@127.0.0.1` then the command).
    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-p")
            .arg(self.port.to_string())
            .arg("-i")
            .arg(self.client_key_path())
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR"])
            // Debian's ssh_config turns GSSAPI on; it only adds round trips here.
            .args(["-o", "GSSAPIAuthentication=no"])
            .arg(format!("{}@{}", self.user, self.address()));
        cmd
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let dir = self.dir.path().display();
        let config = format!(
            "Port {port}
ListenAddress {address}
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
# Nimbus multiplexes many channels over one connection and benchmarks open many at once.
MaxSessions 64
MaxStartups 200:30:400
LogLevel VERBOSE
Subsystem sftp internal-sftp
",
            port = self.port,
            address = self.address(),
            user = self.user,
        );
        fs::write(self.config_path(), config)?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))?;
        let check = Command::new(&self.sshd)
            .arg("-t")
            .arg("-f")
            .arg(self.config_path())
            .output()
            .with_context(|| format!("run {} -t", self.sshd.display()))?;
        if !check.status.success() {
            bail!(
                "sshd rejects its config {}: {}",
                self.config_path().display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                // `ip netns exec` execs the program: the child is sshd itself.
                command.args(["netns", "exec", &netns.name]).arg(&self.sshd);
                command
            }
            None => Command::new(&self.sshd),
        };
        let child = command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.sshd.display()))?;
        self.child = Some(child);
        if let Err(err) = wait_for(self.address(), self.port, Duration::from_secs(10)) {
            let running = self.is_running();
            bail!(
                "sshd on port {} did not come up (running: {running}): {err}\nconfig: {}\nlog:\n{}",
                self.port,
                self.config_path().display(),
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Every live descendant of `root`, found through `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The command name is in parentheses and may contain spaces: parse after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid) in &parents {
            if *ppid == parent && !out.contains(pid) {
                out.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    out
}

fn first_two_fields(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nimbus-test", "-f"])
        .arg(path)
        .output()
        .context("run ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -f {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    id(&["-u"]).is_ok_and(|uid| uid == 0)
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id").args(args).output().context("run id")?;
    if !out.status.success() {
        bail!(
            "id {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The user clients log in as, with uid and gid; creates [`TEST_USER`] when running as root.
fn login_user() -> anyhow::Result<(String, u32, u32)> {
    if !is_root() {
        let name = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        return Ok((name, id(&["-u"])?, id(&["-g"])?));
    }
    if id(&["-u", TEST_USER]).is_err() {
        require_program("useradd", &["/usr/sbin/useradd"], "passwd")?;
        let out = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh"])
            .args(["--home-dir", &format!("/home/{TEST_USER}")])
            .arg(TEST_USER)
            .output()
            .context("run useradd")?;
        // Another test process may have created the user at the same moment.
        if !out.status.success() && id(&["-u", TEST_USER]).is_err() {
            bail!(
                "useradd {TEST_USER} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // `UsePAM no` refuses locked accounts ("!" in the shadow file); "*" is unlocked but has no
    // password.
    let out = Command::new("usermod")
        .args(["-p", "*", TEST_USER])
        .output()
        .context("run usermod")?;
    if !out.status.success() {
        bail!(
            "usermod -p '*' {TEST_USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (uid, gid) = (id(&["-u", TEST_USER])?, id(&["-g", TEST_USER])?);
    let home = PathBuf::from(format!("/home/{TEST_USER}"));
    if !home.is_dir() {
        fs::create_dir_all(&home)?;
        std::os::unix::fs::chown(&home, Some(uid), Some(gid))?;
    }
    Ok((TEST_USER.to_owned(), uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_in_with_the_client_key_and_rotates_its_host_key() {
        let mut sshd = Sshd::start().unwrap();
        let out = sshd.ssh_command().arg("id -un; pwd").output().unwrap();
        assert!(
            out.status.success(),
            "ssh failed: {}\nsshd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with(&format!("{}\n", sshd.user())),
            "{stdout}"
        );

        let scratch = sshd.scratch_dir();
        let out = sshd
            .ssh_command()
            .arg(format!("touch {}/written", scratch.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(scratch.join("written").exists());

        let before = sshd.host_public_key().to_owned();
        assert!(before.starts_with("ssh-ed25519 "), "{before}");
        sshd.rotate_host_key().unwrap();
        assert_ne!(before, sshd.host_public_key());
        assert!(sshd.ssh_command().arg("true").status().unwrap().success());

        sshd.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", sshd.port())).is_err());
    }

    #[test]
    fn hosts_in_network_namespaces_have_their_own_addresses() {
        let a = Sshd::start_in_netns().unwrap();
        let b = Sshd::start_in_netns().unwrap();
        assert_ne!(a.address(), b.address());
        assert_eq!((a.port(), b.port()), (22, 22));
        for sshd in [&a, &b] {
            let out = sshd
                .ssh_command()
                .arg("echo $SSH_CONNECTION")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ssh to {} failed: {}\nsshd log:\n{}",
                sshd.address(),
                String::from_utf8_lossy(&out.stderr),
                sshd.log()
            );
            // The server side of the connection is the namespace's own address.
            let conn = String::from_utf8_lossy(&out.stdout);
            assert!(conn.contains(&format!("{} 22", sshd.address())), "{conn}");
        }
    }
}
