//! OpenIPMI's `ipmi_sim` (Debian `openipmi`): an IPMI 2.0 BMC on 127.0.0.1 (UDP), driven by
//! `ipmitool` (Debian `ipmitool`).
//!
//! The simulator delegates chassis power and boot device to a `chassis_control` script; ours
//! records them in files of the guard's directory, so a test reads what the "hardware" was told
//! ([`IpmiSim::power`], [`IpmiSim::boot`], [`IpmiSim::calls`]).

use std::fs::{self, File};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::require_program;

/// `$1` = MC address, `$2` = get|set|check, then parameters (OpenIPMI's
/// `ipmi_sim_chassiscontrol` protocol).
const CHASSIS_CONTROL: &str = r#"#!/bin/sh
state=$(dirname "$0")
shift
op=$1; shift
echo "$op $*" >> "$state/calls.log"
case $op in
set)
  while [ -n "$1" ]; do
    parm=$1 val=$2; shift 2
    case $parm in
      power) if [ "$val" = 1 ]; then echo on > "$state/power"; else echo off > "$state/power"; fi ;;
      reset) echo on > "$state/power"; echo reset >> "$state/resets" ;;
      boot) echo "$val" > "$state/boot" ;;
    esac
  done ;;
get)
  while [ -n "$1" ]; do
    case $1 in
      power) if [ "$(cat "$state/power" 2>/dev/null)" = on ]; then echo "power:1"; else echo "power:0"; fi ;;
      boot) echo "boot:$(cat "$state/boot" 2>/dev/null || echo default)" ;;
    esac
    shift
  done ;;
esac
exit 0
"#;

/// A running `ipmi_sim`; killed on drop.
pub struct IpmiSim {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
    password: String,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP port on 127.0.0.1")
}

fn quote(value: &str) -> anyhow::Result<String> {
    if value.contains(['"', '\\', '\n']) {
        bail!("ipmi_sim config values cannot contain quotes, backslashes or newlines: {value:?}");
    }
    Ok(format!("\"{value}\""))
}

impl IpmiSim {
    /// Starts a BMC with one admin user `user`/`password` (at most 16 and 20 bytes).
    pub fn start(user: &str, password: &str) -> anyhow::Result<IpmiSim> {
        let program = require_program("ipmi_sim", &[], "Debian openipmi")?;
        require_program("ipmitool", &[], "Debian ipmitool")?;
        let dir = tempfile::Builder::new().prefix("nimbus-ipmi-").tempdir()?;
        let script = dir.path().join("chassis_control");
        fs::write(&script, CHASSIS_CONTROL)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        fs::write(dir.path().join("power"), "off\n")?;
        let port = free_udp_port();
        let lan_conf = format!(
            "name \"nimbus-test\"\n\
             set_working_mc 0x20\n\
             \x20 startlan 1\n\
             \x20   addr 127.0.0.1 {port}\n\
             \x20   priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n\
             \x20   allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n\
             \x20   allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n\
             \x20 endlan\n\
             \x20 chassis_control {}\n\
             user 2 true {} {} admin 10 none md2 md5 straight\n",
            quote(&format!("{} 0x20", script.display()))?,
            quote(user)?,
            quote(password)?,
        );
        fs::write(dir.path().join("lan.conf"), lan_conf)?;
        fs::write(
            dir.path().join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )?;
        let state = dir.path().join("state");
        fs::create_dir_all(&state)?;
        let log = File::create(dir.path().join("ipmi_sim.log"))?;
        let child = Command::new(&program)
            .arg("-c")
            .arg(dir.path().join("lan.conf"))
            .arg("-f")
            .arg(dir.path().join("sim.emu"))
            .arg("-s")
            .arg(&state)
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut sim = IpmiSim {
            child,
            port,
            dir,
            user: user.to_owned(),
            password: password.to_owned(),
        };
        sim.wait_ready(Duration::from_secs(30))?;
        Ok(sim)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("ipmi_sim exited with {status}; its log:\n{}", self.log());
            }
            let out = Command::new("ipmitool")
                .args([
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-N",
                    "1",
                    "-R",
                    "1",
                    "-H",
                    "127.0.0.1",
                    "-p",
                ])
                .arg(self.port.to_string())
                .arg("-U")
                .arg(&self.user)
                .arg("-E")
                .args(["mc", "info"])
                .env("IPMI_PASSWORD", &self.password)
                .output()?;
            if out.status.success() {
                // The probe is not a chassis call the tests should see.
                let _ = fs::remove_file(self.dir.path().join("calls.log"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ipmi_sim did not answer on 127.0.0.1:{} (udp) within {timeout:?}: {}; its log:\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The UDP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `on` or `off`, as the chassis was last told.
    pub fn power(&self) -> String {
        self.read("power").trim().to_owned()
    }

    /// The boot device the chassis was last told (`pxe`, `default`, …), if any.
    pub fn boot(&self) -> Option<String> {
        let boot = self.read("boot");
        (!boot.is_empty()).then(|| boot.trim().to_owned())
    }

    /// Every chassis_control call, one per line (`set power 1`, `get power`, …).
    pub fn calls(&self) -> String {
        self.read("calls.log")
    }

    /// Sets the "hardware" power as if someone pressed the button.
    pub fn set_power(&self, on: bool) -> anyhow::Result<()> {
        fs::write(
            self.dir.path().join("power"),
            if on { "on\n" } else { "off\n" },
        )?;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.read("ipmi_sim.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ipmi_sim.log")
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
