//! What a bare-metal host has: CPU model and cores, memory, disks, NICs, OS and architecture,
//! read from `/proc` and the JSON output of `lsblk` and `ip` (which read `/sys`), on Linux. The parsers are
//! pure functions over the text, so they are tested on captured samples; [`collect`] does the
//! reading, each child process with a deadline.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what}: {message}")]
    Read { what: String, message: String },
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    /// `linux` (the only OS the collector reads today).
    pub os: String,
    pub kernel: String,
    /// `x86_64` or `arm64`, as Nimbus names them.
    pub arch: String,
    pub cpu: Cpu,
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub model: String,
    /// Logical CPUs (hardware threads).
    pub threads: u32,
    /// Physical cores across all sockets, when `/proc/cpuinfo` says (x86 does, most arm64 not).
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
    pub model: Option<String>,
    /// `nvme`, `sata`, `usb`, … when the kernel knows.
    pub transport: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// `UP`, `DOWN`, `UNKNOWN` (`operstate`).
    pub state: String,
    /// `address/prefix` for each IPv4 and IPv6 address.
    pub addresses: Vec<String>,
}

fn parse_err(what: &str, message: impl Into<String>) -> Error {
    Error::Parse {
        what: what.to_owned(),
        message: message.into(),
    }
}

/// `/proc/cpuinfo`: model (`model name`, or arm64's `CPU part`-less `Hardware`/`Model`),
/// logical CPUs (`processor` entries), physical cores (`cpu cores` × distinct `physical id`).
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut sockets = BTreeSet::new();
    let mut cores_per_socket = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => cpu.threads += 1,
            "model name" | "Model" | "Hardware" if cpu.model.is_empty() => {
                cpu.model = value.to_owned()
            }
            "physical id" => {
                sockets.insert(value.to_owned());
            }
            "cpu cores" => cores_per_socket = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    if let Some(per_socket) = cores_per_socket {
        let n_sockets = sockets.len().max(1) as u32;
        cpu.sockets = Some(n_sockets);
        cpu.cores = Some(per_socket * n_sockets);
    }
    cpu
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Result<u64, Error> {
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .ok_or_else(|| parse_err("/proc/meminfo", "no MemTotal line"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|_| parse_err("/proc/meminfo", format!("bad MemTotal line {line:?}")))?;
    Ok(kib * 1024)
}

/// `lsblk --json --bytes -o NAME,SIZE,TYPE,ROTA,MODEL,TRAN`: whole disks only, without empty
/// ones (zram, card readers).
pub fn parse_lsblk(json: &str) -> Result<Vec<Disk>, Error> {
    #[derive(Deserialize)]
    struct Out {
        blockdevices: Vec<Dev>,
    }
    #[derive(Deserialize)]
    struct Dev {
        name: String,
        size: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: String,
        rota: Option<serde_json::Value>,
        model: Option<String>,
        tran: Option<String>,
    }
    let out: Out =
        serde_json::from_str(json).map_err(|e| parse_err("lsblk output", e.to_string()))?;
    // Older lsblk prints numbers and booleans as strings.
    let number = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let flag = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "1",
        _ => false,
    };
    Ok(out
        .blockdevices
        .into_iter()
        .filter(|d| d.kind == "disk" && !d.name.starts_with("zram"))
        .filter_map(|d| {
            let size_bytes = number(&d.size).filter(|&s| s > 0)?;
            Some(Disk {
                rotational: flag(&d.rota),
                name: d.name,
                size_bytes,
                model: d
                    .model
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty()),
                transport: d.tran,
            })
        })
        .collect())
}

/// `ip -json addr show`: every interface but loopback.
pub fn parse_ip_addr(json: &str) -> Result<Vec<Nic>, Error> {
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
        #[serde(default)]
        link_type: Option<String>,
        #[serde(default)]
        address: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        operstate: Option<String>,
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    #[derive(Deserialize)]
    struct Addr {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    let links: Vec<Link> =
        serde_json::from_str(json).map_err(|e| parse_err("ip -json addr output", e.to_string()))?;
    Ok(links
        .into_iter()
        .filter(|l| l.link_type.as_deref() != Some("loopback"))
        .map(|l| Nic {
            mac: l.address.filter(|a| a != "00:00:00:00:00:00"),
            mtu: l.mtu,
            state: l.operstate.unwrap_or_else(|| "UNKNOWN".into()),
            addresses: l
                .addr_info
                .into_iter()
                .filter_map(|a| Some(format!("{}/{}", a.local?, a.prefixlen?)))
                .collect(),
            name: l.ifname,
        })
        .collect())
}

fn read(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(Path::new(path)).map_err(|e| Error::Read {
        what: path.to_owned(),
        message: e.to_string(),
    })
}

async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let what = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Read {
            what: what.clone(),
            message: e.to_string(),
        })?;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| Error::Read {
            what: what.clone(),
            message: "timed out after 10s".into(),
        })?
        .map_err(|e| Error::Read {
            what: what.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Read {
            what,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| parse_err(&what, "not UTF-8"))
}

/// Reads this machine's inventory (Linux).
pub async fn collect() -> Result<Inventory, Error> {
    let cpu = parse_cpuinfo(&read("/proc/cpuinfo")?);
    let memory_bytes = parse_meminfo(&read("/proc/meminfo")?)?;
    let disks = parse_lsblk(
        &run(
            "lsblk",
            &[
                "--json",
                "--bytes",
                "--nodeps",
                "-o",
                "NAME,SIZE,TYPE,ROTA,MODEL,TRAN",
            ],
        )
        .await?,
    )?;
    let nics = parse_ip_addr(&run("ip", &["-json", "addr", "show"]).await?)?;
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    };
    Ok(Inventory {
        hostname: read("/proc/sys/kernel/hostname")?.trim().to_owned(),
        os: std::env::consts::OS.to_owned(),
        kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
        arch,
        cpu,
        memory_bytes,
        disks,
        nics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9354 32-Core Processor\nphysical id\t: 0\ncpu cores\t: 32\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9354 32-Core Processor\nphysical id\t: 1\ncpu cores\t: 32\n\nprocessor\t: 2\nphysical id\t: 0\ncpu cores\t: 32\n";
    const ARM: &str = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x61\n\nprocessor\t: 1\nBogoMIPS\t: 48.00\n\nModel\t: Raspberry Pi 5 Model B Rev 1.0\n";

    #[test]
    fn cpuinfo_gives_model_threads_and_cores() {
        assert_eq!(
            parse_cpuinfo(X86),
            Cpu {
                model: "AMD EPYC 9354 32-Core Processor".into(),
                threads: 3,
                cores: Some(64),
                sockets: Some(2),
            }
        );
        assert_eq!(
            parse_cpuinfo(ARM),
            Cpu {
                model: "Raspberry Pi 5 Model B Rev 1.0".into(),
                threads: 2,
                cores: None,
                sockets: None,
            }
        );
    }

    #[test]
    fn meminfo_total_in_bytes_and_bad_input_named() {
        assert_eq!(
            parse_meminfo("MemTotal:       16384 kB\nMemFree: 1 kB\n").unwrap(),
            16384 * 1024
        );
        let err = parse_meminfo("MemFree: 1 kB\n").unwrap_err();
        assert!(err.to_string().contains("MemTotal"), "{err}");
        let err = parse_meminfo("MemTotal: lots kB\n").unwrap_err();
        assert!(err.to_string().contains("/proc/meminfo"), "{err}");
    }

    #[test]
    fn lsblk_keeps_real_disks_in_new_and_old_formats() {
        let new = r#"{"blockdevices": [
            {"name": "zram0", "size": 0, "type": "disk", "rota": false, "model": null, "tran": null},
            {"name": "nvme0n1", "size": 1000204886016, "type": "disk", "rota": false, "model": "Samsung SSD 990 PRO 1TB ", "tran": "nvme"},
            {"name": "sda", "size": 4000787030016, "type": "disk", "rota": true, "model": "WDC WD40", "tran": "sata"},
            {"name": "sr0", "size": 1073741312, "type": "rom", "rota": true, "model": "DVD", "tran": "sata"},
            {"name": "mmcblk0", "size": 0, "type": "disk", "rota": false, "model": null, "tran": null}
        ]}"#;
        let disks = parse_lsblk(new).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].name, "nvme0n1");
        assert_eq!(disks[0].model.as_deref(), Some("Samsung SSD 990 PRO 1TB"));
        assert!(!disks[0].rotational && disks[1].rotational);
        let old = r#"{"blockdevices": [{"name": "vda", "size": "274877906944", "type": "disk", "rota": "1", "model": null, "tran": null}]}"#;
        assert_eq!(parse_lsblk(old).unwrap()[0].size_bytes, 274_877_906_944);
        assert!(parse_lsblk("{\"blockdevices\": 3}").is_err());
    }

    #[test]
    fn ip_json_lists_nics_with_addresses_but_not_loopback() {
        let json = r#"[
            {"ifindex":1,"ifname":"lo","mtu":65536,"operstate":"UNKNOWN","link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":2,"ifname":"eth0","mtu":1500,"operstate":"UP","link_type":"ether","address":"52:54:00:12:34:56","addr_info":[{"family":"inet","local":"10.0.1.5","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
            {"ifindex":3,"ifname":"eth1","mtu":9000,"operstate":"DOWN","link_type":"ether","address":"52:54:00:12:34:57","addr_info":[]}
        ]"#;
        let nics = parse_ip_addr(json).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].addresses, ["10.0.1.5/24", "fe80::1/64"]);
        assert_eq!(nics[1].state, "DOWN");
        assert_eq!(nics[1].mtu, Some(9000));
        assert!(parse_ip_addr("{}").is_err());
    }
}
