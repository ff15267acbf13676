//! What setup downloads onto a machine: forge runner agents and the macOS tools, each at a pinned
//! version with a pinned SHA-256, from a configurable base URL (mirrors, air-gapped sites).
//!
//! The archive is fetched and verified *on the machine* (`curl`/`wget`, then `sha256sum` or
//! `shasum -a 256`); a mismatch deletes the download and fails the step. Nothing is ever
//! installed without a checksum: a platform without a built-in pin fails with a message saying
//! which pin to configure ([`Installers::pins`]).
//!
//! Built-in checksums were copied from the vendors' published release checksums; only entries
//! whose checksum could be confirmed are pinned.

use std::collections::BTreeMap;
use std::fmt;

use nimbus_types::{Arch, Os};
use serde::{Deserialize, Serialize};

/// The forge runner agents Nimbus installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerKind {
    /// GitHub Actions runner (`actions/runner`); also Nimbus Git's CI plugin speaks its protocol.
    GithubActions,
    GitlabRunner,
    ForgejoRunner,
}

/// Every piece of software setup can download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Software {
    GithubActionsRunner,
    GitlabRunner,
    ForgejoRunner,
    /// macOS VM manager (macvmio/curie).
    Curie,
    /// macOS VM image tool (macvmio/geranos).
    Geranos,
}

impl Software {
    pub const ALL: &'static [Software] = &[
        Software::GithubActionsRunner,
        Software::GitlabRunner,
        Software::ForgejoRunner,
        Software::Curie,
        Software::Geranos,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Software::GithubActionsRunner => "github-actions-runner",
            Software::GitlabRunner => "gitlab-runner",
            Software::ForgejoRunner => "forgejo-runner",
            Software::Curie => "curie",
            Software::Geranos => "geranos",
        }
    }

    /// The vendor's download base URL.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Software::GithubActionsRunner => "https://github.com/actions/runner/releases/download",
            Software::GitlabRunner => "https://gitlab-runner-downloads.s3.amazonaws.com",
            Software::ForgejoRunner => "https://code.forgejo.org/forgejo/runner/releases/download",
            Software::Curie => "https://github.com/macvmio/curie/releases/download",
            Software::Geranos => "https://github.com/macvmio/geranos/releases/download",
        }
    }
}

impl fmt::Display for Software {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RunnerKind> for Software {
    fn from(kind: RunnerKind) -> Self {
        match kind {
            RunnerKind::GithubActions => Software::GithubActionsRunner,
            RunnerKind::GitlabRunner => Software::GitlabRunner,
            RunnerKind::ForgejoRunner => Software::ForgejoRunner,
        }
    }
}

/// How a download is unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A gzipped tarball, extracted into the install directory.
    TarGz,
    /// A single executable, installed under [`Artifact::binary`].
    Binary,
}

/// One file to download, verify and unpack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub software: Software,
    pub version: String,
    pub url: String,
    pub sha256: String,
    pub format: Format,
    /// The executable's name after installation.
    pub binary: String,
}

/// A version and checksum for one platform, replacing (or adding to) the built-in pins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub software: Software,
    pub os: Os,
    pub arch: Arch,
    pub version: String,
    pub sha256: String,
    /// The file's path below the base URL; the vendor's layout for `version` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Download settings: base URLs and extra pins. The default uses the vendors' sites and the
/// built-in pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installers {
    /// Per-software base URL replacing the vendor's; the file's path below it stays the vendor's
    /// layout (e.g. `v2.334.0/actions-runner-linux-x64-2.334.0.tar.gz`).
    #[serde(default)]
    pub base_urls: BTreeMap<Software, String>,
    /// Pins that take precedence over the built-in ones.
    #[serde(default)]
    pub pins: Vec<Pin>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{software} has no build for {os}/{arch}")]
    Unsupported {
        software: Software,
        os: Os,
        arch: Arch,
    },
    #[error(
        "no pinned SHA-256 for {software} on {os}/{arch}; add a pin (software, os, arch, version, sha256) to the installer settings"
    )]
    NoPin {
        software: Software,
        os: Os,
        arch: Arch,
    },
    #[error("invalid pin for {software}: {message}")]
    BadPin { software: Software, message: String },
}

/// Built-in pins: (software, os, arch, version, sha256).
const PINNED: &[(Software, Os, Arch, &str, &str)] = &[
    (
        Software::GithubActionsRunner,
        Os::Linux,
        Arch::X86_64,
        "2.334.0",
        "048024cd2c848eb6f14d5646d56c13a4def2ae7ee3ad12122bee960c56f3d271",
    ),
    (
        Software::GithubActionsRunner,
        Os::Linux,
        Arch::Arm64,
        "2.334.0",
        "f44255bd3e80160eb25f71bc83d06ea025f6908748807a584687b3184759f7e4",
    ),
    (
        Software::GithubActionsRunner,
        Os::Macos,
        Arch::X86_64,
        "2.334.0",
        "73a979ff7e9ce8a70244f3a959d896870be486fac92bb08ed90684f961474e0d",
    ),
    (
        Software::GithubActionsRunner,
        Os::Macos,
        Arch::Arm64,
        "2.334.0",
        "760899b29fd4e942076bcd1160a662bf83c15d9ce8a8cc466763aec7e582b21b",
    ),
    (
        Software::ForgejoRunner,
        Os::Linux,
        Arch::X86_64,
        "13.1.0",
        "29dae21e93f0eab5cdf3564008d44603c74770b41a4f4f1aceed172c774bc376",
    ),
];

fn check_sha256(software: Software, sha256: &str) -> Result<(), Error> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::BadPin {
            software,
            message: "sha256 must be 64 hexadecimal digits".into(),
        })
    }
}

/// The vendor's file layout below the base URL, and how the file is unpacked.
fn vendor_file(
    software: Software,
    version: &str,
    os: Os,
    arch: Arch,
) -> Result<(String, Format), Error> {
    let unsupported = Error::Unsupported { software, os, arch };
    Ok(match software {
        Software::GithubActionsRunner => {
            let os = match os {
                Os::Linux => "linux",
                Os::Macos => "osx",
            };
            let arch = match arch {
                Arch::X86_64 => "x64",
                Arch::Arm64 => "arm64",
            };
            (
                format!("v{version}/actions-runner-{os}-{arch}-{version}.tar.gz"),
                Format::TarGz,
            )
        }
        Software::GitlabRunner => {
            let os = match os {
                Os::Linux => "linux",
                Os::Macos => "darwin",
            };
            let arch = match arch {
                Arch::X86_64 => "amd64",
                Arch::Arm64 => "arm64",
            };
            (
                format!("v{version}/binaries/gitlab-runner-{os}-{arch}"),
                Format::Binary,
            )
        }
        Software::ForgejoRunner => {
            // Forgejo publishes Linux builds only.
            if os != Os::Linux {
                return Err(unsupported);
            }
            let arch = match arch {
                Arch::X86_64 => "amd64",
                Arch::Arm64 => "arm64",
            };
            (
                format!("v{version}/forgejo-runner-{version}-linux-{arch}"),
                Format::Binary,
            )
        }
        Software::Curie | Software::Geranos => {
            if os != Os::Macos || arch != Arch::Arm64 {
                return Err(unsupported);
            }
            // No built-in layout: a pin must name its file.
            return Err(Error::NoPin { software, os, arch });
        }
    })
}

/// The executable a download installs.
fn binary_name(software: Software) -> &'static str {
    match software {
        Software::GithubActionsRunner => "run.sh",
        Software::GitlabRunner => "gitlab-runner",
        Software::ForgejoRunner => "forgejo-runner",
        Software::Curie => "curie",
        Software::Geranos => "geranos",
    }
}

impl Installers {
    /// What to download for `software` on a machine of this platform.
    pub fn resolve(&self, software: Software, os: Os, arch: Arch) -> Result<Artifact, Error> {
        let base = self
            .base_urls
            .get(&software)
            .map(String::as_str)
            .unwrap_or(software.default_base_url())
            .trim_end_matches('/');
        if let Some(pin) = self
            .pins
            .iter()
            .find(|pin| pin.software == software && pin.os == os && pin.arch == arch)
        {
            check_sha256(software, &pin.sha256)?;
            if pin.version.is_empty() || pin.version.contains(['/', '\0', '\n']) {
                return Err(Error::BadPin {
                    software,
                    message: format!("version {:?} is not a plain version", pin.version),
                });
            }
            let (file, format) = match (&pin.file, pin.format) {
                (Some(file), format) => (file.clone(), format.unwrap_or(Format::TarGz)),
                (None, format) => {
                    let (file, vendor_format) = vendor_file(software, &pin.version, os, arch)?;
                    (file, format.unwrap_or(vendor_format))
                }
            };
            return Ok(Artifact {
                software,
                version: pin.version.clone(),
                url: format!("{base}/{}", file.trim_start_matches('/')),
                sha256: pin.sha256.to_ascii_lowercase(),
                format,
                binary: binary_name(software).into(),
            });
        }
        let (version, sha256) = PINNED
            .iter()
            .find(|(s, o, a, _, _)| *s == software && *o == os && *a == arch)
            .map(|(_, _, _, version, sha256)| (*version, *sha256))
            .ok_or_else(|| {
                // Say "no build" rather than "no pin" where the vendor has none.
                match vendor_file(software, "0", os, arch) {
                    Err(err @ Error::Unsupported { .. }) => err,
                    _ => Error::NoPin { software, os, arch },
                }
            })?;
        let (file, format) = vendor_file(software, version, os, arch)?;
        Ok(Artifact {
            software,
            version: version.into(),
            url: format!("{base}/{file}"),
            sha256: sha256.into(),
            format,
            binary: binary_name(software).into(),
        })
    }
}

/// Downloads `$1` to `$3`, checks its SHA-256 against `$2`, and unpacks it into `$4` (format
/// `$5`, executable name `$6`). A cached download with the right checksum is reused.
pub const DOWNLOAD_SCRIPT: &str = r#"set -eu
url=$1 want=$2 dest=$3 into=$4 format=$5 binary=$6
sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else echo "neither sha256sum nor shasum is installed" >&2; return 127; fi
}
mkdir -p -- "$(dirname -- "$dest")" "$into"
if [ -f "$dest" ] && [ "$(sha256 "$dest")" = "$want" ]; then
  echo "using the cached download $dest"
else
  rm -f -- "$dest.part"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 --connect-timeout 20 -o "$dest.part" -- "$url" || { echo "download of $url failed" >&2; exit 1; }
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$dest.part" -- "$url" || { echo "download of $url failed" >&2; exit 1; }
  else
    echo "neither curl nor wget is installed" >&2; exit 127
  fi
  got=$(sha256 "$dest.part")
  if [ "$got" != "$want" ]; then
    rm -f -- "$dest.part"
    echo "checksum mismatch for $url: expected sha256 $want, got $got" >&2
    exit 1
  fi
  mv -f -- "$dest.part" "$dest"
fi
case $format in
  tar-gz) tar -xzf "$dest" -C "$into" ;;
  binary) cp -f -- "$dest" "$into/$binary.new" && chmod 755 "$into/$binary.new" && mv -f -- "$into/$binary.new" "$into/$binary" ;;
  *) echo "unknown archive format $format" >&2; exit 2 ;;
esac
echo "installed $url into $into""#;

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::TarGz => "tar-gz",
            Format::Binary => "binary",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_pins_are_well_formed() {
        for (software, os, arch, version, sha256) in PINNED {
            check_sha256(*software, sha256).unwrap();
            let artifact = Installers::default()
                .resolve(*software, *os, *arch)
                .unwrap();
            assert_eq!(artifact.version, *version);
            assert!(artifact.url.starts_with("https://"), "{}", artifact.url);
        }
        let gh = Installers::default()
            .resolve(Software::GithubActionsRunner, Os::Linux, Arch::X86_64)
            .unwrap();
        assert_eq!(
            gh.url,
            "https://github.com/actions/runner/releases/download/v2.334.0/actions-runner-linux-x64-2.334.0.tar.gz"
        );
        assert_eq!(gh.format, Format::TarGz);
    }

    #[test]
    fn base_urls_and_pins_override() {
        let mut installers = Installers::default();
        installers.base_urls.insert(
            Software::ForgejoRunner,
            "http://mirror.internal/forgejo/".into(),
        );
        let artifact = installers
            .resolve(Software::ForgejoRunner, Os::Linux, Arch::X86_64)
            .unwrap();
        assert_eq!(
            artifact.url,
            "http://mirror.internal/forgejo/v13.1.0/forgejo-runner-13.1.0-linux-amd64"
        );
        assert_eq!(artifact.format, Format::Binary);

        installers.pins.push(Pin {
            software: Software::ForgejoRunner,
            os: Os::Linux,
            arch: Arch::X86_64,
            version: "9.9.9".into(),
            sha256: "ab".repeat(32),
            file: None,
            format: None,
        });
        let artifact = installers
            .resolve(Software::ForgejoRunner, Os::Linux, Arch::X86_64)
            .unwrap();
        assert_eq!(artifact.version, "9.9.9");
        assert!(
            artifact
                .url
                .ends_with("/v9.9.9/forgejo-runner-9.9.9-linux-amd64")
        );
    }

    #[test]
    fn missing_pins_and_builds_are_clear_errors() {
        let installers = Installers::default();
        let err = installers
            .resolve(Software::ForgejoRunner, Os::Macos, Arch::Arm64)
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let err = installers
            .resolve(Software::GitlabRunner, Os::Linux, Arch::X86_64)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no pinned SHA-256 for gitlab-runner"),
            "{err}"
        );
        let err = installers
            .resolve(Software::Curie, Os::Macos, Arch::Arm64)
            .unwrap_err();
        assert!(matches!(err, Error::NoPin { .. }), "{err}");

        let mut bad = Installers::default();
        bad.pins.push(Pin {
            software: Software::GitlabRunner,
            os: Os::Linux,
            arch: Arch::X86_64,
            version: "18.0.0".into(),
            sha256: "not-a-checksum".into(),
            file: None,
            format: None,
        });
        let err = bad
            .resolve(Software::GitlabRunner, Os::Linux, Arch::X86_64)
            .unwrap_err();
        assert!(matches!(err, Error::BadPin { .. }), "{err}");
    }

    #[test]
    fn settings_parse_from_json() {
        let installers: Installers = serde_json::from_value(serde_json::json!({
            "base_urls": {"github-actions-runner": "http://127.0.0.1:1/gh"},
            "pins": [{"software": "curie", "os": "macos", "arch": "arm64", "version": "1.0.0",
                      "sha256": "00".repeat(32), "file": "v1.0.0/curie.tar.gz"}]
        }))
        .unwrap();
        let curie = installers
            .resolve(Software::Curie, Os::Macos, Arch::Arm64)
            .unwrap();
        assert_eq!(
            curie.url,
            "https://github.com/macvmio/curie/releases/download/v1.0.0/curie.tar.gz"
        );
        assert!(serde_json::from_value::<Installers>(serde_json::json!({"bogus": 1})).is_err());
    }
}
