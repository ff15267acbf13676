use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Operating system of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Macos,
    Linux,
}

/// CPU architecture of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Arch {
    #[serde(rename = "arm64")]
    Arm64,
    #[serde(rename = "x86_64")]
    X86_64,
}

/// How a machine's image is delivered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Ami,
    Docker,
    #[default]
    None,
}

macro_rules! str_enum {
    ($ty:ty { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $(<$ty>::$variant => $s),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(<$ty>::$variant),)+
                    _ => Err(format!(
                        "unknown value {s:?}, expected one of: {}",
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use str_enum;

str_enum!(Os { Macos => "macos", Linux => "linux" });
str_enum!(Arch { Arm64 => "arm64", X86_64 => "x86_64" });
str_enum!(ImageType { Ami => "ami", Docker => "docker", None => "none" });

impl Arch {
    /// The architecture of the machine this code runs on, if Nimbus knows it.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl Os {
    /// The operating system of the machine this code runs on, if Nimbus knows it.
    pub fn host() -> Option<Os> {
        match std::env::consts::OS {
            "linux" => Some(Os::Linux),
            "macos" => Some(Os::Macos),
            _ => None,
        }
    }
}

/// What a caller asks for when provisioning a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineSpec {
    pub os: Os,
    pub arch: Arch,
    /// Runner labels; see [`validate_label`] for the rules.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Provider-specific size, e.g. `mac2.metal` or `t3.large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_type: ImageType,
    /// A shell script run on the machine as the last setup step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    /// Skip setup entirely: the image is prebuilt and the machine is ready once it runs.
    #[serde(default)]
    pub skip_setup: bool,
}

impl MachineSpec {
    pub fn new(os: Os, arch: Arch) -> Self {
        MachineSpec {
            os,
            arch,
            labels: Vec::new(),
            instance_type: None,
            image_id: None,
            image_type: ImageType::None,
            setup_script: None,
            skip_setup: false,
        }
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.labels.len() > MAX_LABELS {
            return Err(SpecError::new(
                "labels",
                format!("at most {MAX_LABELS} labels are allowed"),
            ));
        }
        for (idx, label) in self.labels.iter().enumerate() {
            validate_label(label)
                .map_err(|message| SpecError::new(format!("labels[{idx}]"), message))?;
        }
        let mut seen = std::collections::HashSet::new();
        for label in &self.labels {
            if !seen.insert(label.as_str()) {
                return Err(SpecError::new(
                    "labels",
                    format!("duplicate label {label:?}"),
                ));
            }
        }
        if let Some(instance_type) = &self.instance_type {
            let ok = !instance_type.is_empty()
                && instance_type.len() <= 64
                && instance_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(SpecError::new(
                    "instance_type",
                    "must be 1-64 characters of letters, digits, '.', '-' or '_'",
                ));
            }
        }
        if let Some(image_id) = &self.image_id {
            let ok = !image_id.is_empty()
                && image_id.len() <= 256
                && image_id.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err(SpecError::new(
                    "image_id",
                    "must be 1-256 printable ASCII characters without spaces",
                ));
            }
        }
        if self.image_type != ImageType::None && self.image_id.is_none() {
            return Err(SpecError::new(
                "image_id",
                format!("is required when image_type is {}", self.image_type),
            ));
        }
        if let Some(script) = &self.setup_script {
            if script.len() > MAX_SETUP_SCRIPT {
                return Err(SpecError::new(
                    "setup_script",
                    format!("must be at most {MAX_SETUP_SCRIPT} bytes"),
                ));
            }
            if script.contains('\0') {
                return Err(SpecError::new("setup_script", "must not contain NUL bytes"));
            }
        }
        Ok(())
    }
}

pub const MAX_LABELS: usize = 32;
pub const MAX_SETUP_SCRIPT: usize = 64 * 1024;

/// A label is 1-63 characters: ASCII letters, digits, `.`, `_`, `-` and `:`, starting with a
/// letter or digit. Forges accept at least this set, and it is safe in any shell or SQL context.
pub fn validate_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err("must be 1-63 characters long".into());
    }
    if !label.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{label:?} must start with a letter or digit"));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "{label:?} contains {bad:?}; allowed are letters, digits, '.', '_', '-' and ':'"
        ));
    }
    Ok(())
}

/// Names of tenants, providers and pools: 1-63 characters of lowercase letters, digits, `-` and
/// `_`, starting with a letter or digit, so they work in URLs, tags and file names as they are.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1-63 characters long".into());
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "{name:?} must start with a lowercase letter or digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; allowed are lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// A rejected field of a request, named so the caller can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_label(label: &str, ok: bool) {
        assert_eq!(validate_label(label).is_ok(), ok, "label {label:?}");
    }

    #[test]
    fn labels() {
        for good in [
            "linux",
            "self-hosted",
            "x86_64",
            "macos-14",
            "gpu:a100",
            "a",
            "A.b_c",
        ] {
            check_label(good, true);
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-x",
            "a b",
            "a;b",
            "$(id)",
            "a'b",
            "a\"b",
            "a\nb",
            "ä",
            long.as_str(),
        ] {
            check_label(bad, false);
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("acme-ci_2").is_ok());
        for bad in ["", "Acme", "-a", "a/b", "a.b", "../x"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.labels = vec!["ok".into(), "not ok".into()];
        assert_eq!(spec.validate().unwrap_err().field, "labels[1]");

        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.instance_type = Some("t3 large".into());
        assert_eq!(spec.validate().unwrap_err().field, "instance_type");

        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.image_type = ImageType::Ami;
        assert_eq!(spec.validate().unwrap_err().field, "image_id");

        let mut spec = MachineSpec::new(Os::Linux, Arch::X86_64);
        spec.labels = vec!["a".into(), "a".into()];
        assert_eq!(spec.validate().unwrap_err().field, "labels");
    }

    #[test]
    fn unknown_os_and_arch_are_rejected_when_parsing() {
        let err =
            serde_json::from_str::<MachineSpec>(r#"{"os":"windows","arch":"x86_64"}"#).unwrap_err();
        assert!(err.to_string().contains("windows"), "{err}");
        assert!("sparc".parse::<Arch>().is_err());
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Arm64);
    }
}
