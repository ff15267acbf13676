//! The provider registry: a Git repository with one TOML file per hardware owner, reviewed like
//! code. This module is its schema and validation, and the search over validated entries; it
//! reads text it is given and does no I/O beyond [`load_dir`].
//!
//! A file (`<name>.toml`, anywhere in the repository outside hidden directories):
//!
//! ```toml
//! schema = 1
//! name = "acme-berlin"                        # unique in the registry; the file's stem
//! owner = "Acme Hosting GmbH"
//! contact = "ops@acme.example"                # an e-mail address or an https URL
//! location = "Berlin, DE"
//! agent = "https://rack1.acme.example:9443"   # the owner's agent endpoint, for people
//! bmc = "redfish"                             # redfish | ipmi | none
//!
//! [[classes]]
//! name = "m2-mini"
//! count = 12
//! os = "macos"
//! arch = "arm64"
//! cpu = "Apple M2"
//! cores = 8
//! memory_gb = 16
//! disk_gb = 256
//! price_per_hour = 0.12                       # US dollars
//! labels = ["xcode-16"]
//! ```
//!
//! Every mistake is a [`Diagnostic`] naming the file, line, column and key. Syntax and schema
//! errors (bad TOML, an unknown or missing key, a value of the wrong type) stop at the first
//! one, as the TOML parser does; the rules on values (names, URLs, counts, prices, duplicates)
//! are all reported.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use nimbus_types::{Arch, Os, validate_label};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Highest sane values: a registry entry describes a rack, not a cloud region.
pub const MAX_COUNT: u32 = 10_000;
pub const MAX_CORES: u32 = 1_024;
pub const MAX_MEMORY_GB: u32 = 65_536;
pub const MAX_DISK_GB: u32 = 1_048_576;
pub const MAX_PRICE_PER_HOUR: f64 = 1_000.0;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem is not at one place (a file that cannot be read).
    pub line: usize,
    pub column: usize,
    /// The dotted key (`classes[1].price_per_hour`), empty when none applies.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcSupport {
    Redfish,
    Ipmi,
    None,
}

/// A file as written (with positions), before the value rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    schema: Spanned<u32>,
    name: Spanned<String>,
    owner: Spanned<String>,
    contact: Spanned<String>,
    location: Spanned<String>,
    agent: Spanned<String>,
    bmc: BmcSupport,
    classes: Spanned<Vec<RawClass>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: Spanned<String>,
    count: Spanned<u32>,
    os: Os,
    arch: Arch,
    cpu: Spanned<String>,
    cores: Spanned<u32>,
    memory_gb: Spanned<u32>,
    disk_gb: Spanned<u32>,
    price_per_hour: Spanned<f64>,
    #[serde(default)]
    labels: Option<Spanned<Vec<String>>>,
}

/// A validated registry entry: one hardware owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub owner: String,
    pub contact: String,
    pub location: String,
    pub agent: String,
    pub bmc: BmcSupport,
    pub classes: Vec<HardwareClass>,
}

/// A kind of machine an owner offers, and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardwareClass {
    pub name: String,
    pub count: u32,
    pub os: Os,
    pub arch: Arch,
    pub cpu: String,
    pub cores: u32,
    pub memory_gb: u32,
    pub disk_gb: u32,
    pub price_per_hour: f64,
    pub labels: Vec<String>,
}

/// Line and column (1-based, columns in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    // toml spans start on character boundaries; anything else counts from the end.
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The dotted key a serde error is about: the field its message names, else the `key =` on the
/// line it points at, under the table header in effect there.
fn key_at(text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let named = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|prefix| {
            let rest = &message[message.find(prefix)? + prefix.len()..];
            Some(rest[..rest.find('`')?].to_owned())
        });
    let Some(span) = span else {
        return named.unwrap_or_default();
    };
    let (line_no, _) = position(text, span.start);
    let lines: Vec<&str> = text.lines().collect();
    // The table header in effect, with the index of `[[classes]]` arrays.
    let mut table = String::new();
    let mut class_idx: Option<usize> = None;
    for line in lines.iter().take(line_no) {
        let line = line.trim();
        if line.starts_with("[[classes]]") {
            class_idx = Some(class_idx.map_or(0, |i| i + 1));
            table = format!("classes[{}]", class_idx.unwrap_or(0));
        } else if line.starts_with('[') {
            table = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
    }
    let key = named.or_else(|| {
        let line = lines.get(line_no.saturating_sub(1))?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
    });
    match (table.is_empty(), key) {
        (_, None) => table,
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = position(self.text, span.start);
        self.out.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn text(&mut self, value: &Spanned<String>, key: &str, max: usize) {
        let v = value.get_ref();
        if v.trim().is_empty() {
            self.at(value.span(), key, "must not be empty");
        } else if v.chars().count() > max {
            self.at(
                value.span(),
                key,
                format!("must be at most {max} characters"),
            );
        } else if v.chars().any(char::is_control) {
            self.at(value.span(), key, "must not contain control characters");
        }
    }

    fn range(&mut self, value: &Spanned<u32>, key: &str, min: u32, max: u32) {
        if !(min..=max).contains(value.get_ref()) {
            self.at(
                value.span(),
                key,
                format!("must be {min}-{max}, not {}", value.get_ref()),
            );
        }
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn is_http_url(value: &str, https_only: bool) -> bool {
    match reqwest::Url::parse(value) {
        Ok(url) => {
            url.host_str().is_some()
                && (url.scheme() == "https" || (!https_only && url.scheme() == "http"))
                && url.username().is_empty()
                && url.password().is_none()
        }
        Err(_) => false,
    }
}

fn is_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

/// Parses and checks one file. `file` is how diagnostics name it; `stem`, when given, is the
/// file name without `.toml`, which must equal the entry's `name`.
pub fn parse_entry(file: &str, stem: Option<&str>, text: &str) -> Result<Entry, Vec<Diagnostic>> {
    let raw: RawEntry = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let span = err.span();
            let (line, column) = span.clone().map_or((1, 1), |s| position(text, s.start));
            let message = err.message().trim().to_owned();
            return Err(vec![Diagnostic {
                file: file.to_owned(),
                line,
                column,
                key: key_at(text, span, &message),
                message,
            }]);
        }
    };
    let mut check = Checker {
        file,
        text,
        out: Vec::new(),
    };
    if *raw.schema.get_ref() != 1 {
        check.at(
            raw.schema.span(),
            "schema",
            format!(
                "unsupported schema {}; this nimbus reads schema 1",
                raw.schema.get_ref()
            ),
        );
    }
    if !is_name(raw.name.get_ref()) {
        check.at(
            raw.name.span(),
            "name",
            "must be 1-63 lowercase letters, digits or '-', starting with a letter",
        );
    } else if let Some(stem) = stem
        && stem != raw.name.get_ref()
    {
        check.at(
            raw.name.span(),
            "name",
            format!(
                "is {:?} but the file is {stem}.toml; they must match",
                raw.name.get_ref()
            ),
        );
    }
    check.text(&raw.owner, "owner", 200);
    check.text(&raw.location, "location", 200);
    let contact = raw.contact.get_ref();
    if !is_email(contact) && !is_http_url(contact, true) {
        check.at(
            raw.contact.span(),
            "contact",
            "must be an e-mail address or an https URL",
        );
    }
    if !is_http_url(raw.agent.get_ref(), false) {
        check.at(
            raw.agent.span(),
            "agent",
            "must be the agent's http(s) URL, without user or password",
        );
    }
    if raw.classes.get_ref().is_empty() {
        check.at(
            raw.classes.span(),
            "classes",
            "at least one [[classes]] is required",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (idx, class) in raw.classes.get_ref().iter().enumerate() {
        let key = |name: &str| format!("classes[{idx}].{name}");
        if !is_name(class.name.get_ref()) {
            check.at(
                class.name.span(),
                key("name"),
                "must be 1-63 lowercase letters, digits or '-', starting with a letter",
            );
        } else if let Some(first) = seen.insert(class.name.get_ref().clone(), idx) {
            check.at(
                class.name.span(),
                key("name"),
                format!(
                    "duplicate class {:?} (also classes[{first}])",
                    class.name.get_ref()
                ),
            );
        }
        check.range(&class.count, &key("count"), 1, MAX_COUNT);
        check.range(&class.cores, &key("cores"), 1, MAX_CORES);
        check.range(&class.memory_gb, &key("memory_gb"), 1, MAX_MEMORY_GB);
        check.range(&class.disk_gb, &key("disk_gb"), 1, MAX_DISK_GB);
        check.text(&class.cpu, &key("cpu"), 100);
        let price = *class.price_per_hour.get_ref();
        if !price.is_finite() || !(0.0..=MAX_PRICE_PER_HOUR).contains(&price) {
            check.at(
                class.price_per_hour.span(),
                key("price_per_hour"),
                format!("must be 0-{MAX_PRICE_PER_HOUR} dollars per hour, not {price}"),
            );
        }
        let mut labels_seen = std::collections::HashSet::new();
        let labels = class.labels.as_ref();
        for (label_idx, label) in labels
            .map(|l| l.get_ref().as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let span = labels.map(Spanned::span).unwrap_or_default();
            if let Err(message) = validate_label(label) {
                check.at(
                    span.clone(),
                    format!("classes[{idx}].labels[{label_idx}]"),
                    message,
                );
            } else if !labels_seen.insert(label) {
                check.at(
                    span,
                    format!("classes[{idx}].labels[{label_idx}]"),
                    format!("duplicate label {label:?}"),
                );
            }
        }
    }
    if !check.out.is_empty() {
        return Err(check.out);
    }
    Ok(Entry {
        name: raw.name.into_inner(),
        owner: raw.owner.into_inner(),
        contact: raw.contact.into_inner(),
        location: raw.location.into_inner(),
        agent: raw.agent.into_inner(),
        bmc: raw.bmc,
        classes: raw
            .classes
            .into_inner()
            .into_iter()
            .map(|c| HardwareClass {
                name: c.name.into_inner(),
                count: c.count.into_inner(),
                os: c.os,
                arch: c.arch,
                cpu: c.cpu.into_inner(),
                cores: c.cores.into_inner(),
                memory_gb: c.memory_gb.into_inner(),
                disk_gb: c.disk_gb.into_inner(),
                price_per_hour: c.price_per_hour.into_inner(),
                labels: c.labels.map(Spanned::into_inner).unwrap_or_default(),
            })
            .collect(),
    })
}

/// A whole registry: the valid entries by name, and every diagnostic.
#[derive(Debug, Default)]
pub struct Registry {
    pub entries: BTreeMap<String, Entry>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Registry {
    /// Checks a set of files, `(path as shown, text)`; names must be unique across files.
    pub fn from_files(files: &[(String, String)]) -> Registry {
        let mut registry = Registry::default();
        let mut origin: HashMap<String, String> = HashMap::new();
        for (file, text) in files {
            let stem = Path::new(file)
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned);
            match parse_entry(file, stem.as_deref(), text) {
                Ok(entry) => {
                    if let Some(first) = origin.get(&entry.name) {
                        let (line, column) = text
                            .find("name")
                            .map_or((1, 1), |offset| position(text, offset));
                        registry.diagnostics.push(Diagnostic {
                            file: file.clone(),
                            line,
                            column,
                            key: "name".into(),
                            message: format!(
                                "provider {:?} is also defined in {first}",
                                entry.name
                            ),
                        });
                        continue;
                    }
                    origin.insert(entry.name.clone(), file.clone());
                    registry.entries.insert(entry.name.clone(), entry);
                }
                Err(diagnostics) => registry.diagnostics.extend(diagnostics),
            }
        }
        registry
    }

    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Every class of every valid entry that `query` matches, cheapest first.
    pub fn search(&self, query: &Query) -> Vec<Offer<'_>> {
        let mut offers: Vec<Offer<'_>> = self
            .entries
            .values()
            .flat_map(|entry| {
                entry
                    .classes
                    .iter()
                    .map(move |class| Offer { entry, class })
            })
            .filter(|offer| query.matches(offer))
            .collect();
        offers.sort_by(|a, b| {
            a.class
                .price_per_hour
                .total_cmp(&b.class.price_per_hour)
                .then_with(|| a.entry.name.cmp(&b.entry.name))
                .then_with(|| a.class.name.cmp(&b.class.name))
        });
        offers
    }
}

/// Reads every `*.toml` under `dir` (skipping hidden directories such as `.git`), or the one
/// file `dir` names, and checks them. Paths in diagnostics are relative to `dir`.
pub fn load_dir(dir: &Path) -> std::io::Result<Registry> {
    let mut paths = Vec::new();
    if dir.is_file() {
        paths.push(dir.to_owned());
    } else {
        collect(dir, &mut paths)?;
    }
    paths.sort();
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for path in paths {
        let shown = path
            .strip_prefix(dir)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&path)
            .display()
            .to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((shown, text)),
            Err(err) => unreadable.push(Diagnostic {
                file: shown,
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {err}"),
            }),
        }
    }
    let mut registry = Registry::from_files(&files);
    registry.diagnostics.extend(unreadable);
    Ok(registry)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let kind = entry.file_type()?;
        if kind.is_dir() && !hidden {
            collect(&path, out)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

/// What `nimbusctl registry search` filters by; `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub os: Option<Os>,
    pub arch: Option<Arch>,
    pub min_cores: Option<u32>,
    pub min_memory_gb: Option<u32>,
    pub max_price: Option<f64>,
    pub bmc: Option<BmcSupport>,
    /// Every label must be offered.
    pub labels: Vec<String>,
}

impl Query {
    pub fn matches(&self, offer: &Offer<'_>) -> bool {
        let class = offer.class;
        self.os.is_none_or(|os| class.os == os)
            && self.arch.is_none_or(|arch| class.arch == arch)
            && self.min_cores.is_none_or(|n| class.cores >= n)
            && self.min_memory_gb.is_none_or(|n| class.memory_gb >= n)
            && self.max_price.is_none_or(|p| class.price_per_hour <= p)
            && self.bmc.is_none_or(|b| offer.entry.bmc == b)
            && self.labels.iter().all(|l| class.labels.contains(l))
    }
}

/// One hardware class of one entry.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Offer<'a> {
    pub entry: &'a Entry,
    pub class: &'a HardwareClass,
}
