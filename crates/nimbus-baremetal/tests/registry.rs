//! The provider registry schema: every kind of mistake gets file, line, column and key.

use nimbus_baremetal::registry::{BmcSupport, Query, Registry, parse_entry};
use nimbus_types::{Arch, Os};

const GOOD: &str = r#"schema = 1
name = "acme-berlin"
owner = "Acme Hosting GmbH"
contact = "ops@acme.example"
location = "Berlin, DE"
agent = "https://rack1.acme.example:9443"
bmc = "redfish"

[[classes]]
name = "m2-mini"
count = 12
os = "macos"
arch = "arm64"
cpu = "Apple M2"
cores = 8
memory_gb = 16
disk_gb = 256
price_per_hour = 0.12
labels = ["xcode-16"]

[[classes]]
name = "epyc"
count = 4
os = "linux"
arch = "x86_64"
cpu = "AMD EPYC 9354"
cores = 32
memory_gb = 128
disk_gb = 1920
price_per_hour = 0.60
"#;

/// Replaces the first occurrence of `from` in the good file and expects exactly one
/// diagnostic at `line:column` for `key` whose message contains `words`.
fn check(from: &str, to: &str, expect: &str, words: &str) {
    assert!(GOOD.contains(from), "{from:?} is not in the sample");
    let text = GOOD.replacen(from, to, 1);
    let diagnostics = parse_entry("providers/acme-berlin.toml", Some("acme-berlin"), &text)
        .expect_err(&format!("{from:?} -> {to:?} must be rejected"));
    let shown: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(diagnostics.len(), 1, "{shown:#?}");
    let d = &diagnostics[0];
    let got = format!("{}:{}:{}", d.line, d.column, d.key);
    assert_eq!(got, expect, "{shown:#?}");
    assert!(d.message.contains(words), "{shown:#?}");
    assert!(
        shown[0].starts_with("providers/acme-berlin.toml:"),
        "{shown:#?}"
    );
}

#[test]
fn the_sample_is_valid() {
    let entry = parse_entry("acme-berlin.toml", Some("acme-berlin"), GOOD).unwrap();
    assert_eq!(entry.classes.len(), 2);
    assert_eq!(entry.bmc, BmcSupport::Redfish);
    assert_eq!(entry.classes[0].labels, ["xcode-16"]);
    assert_eq!(entry.classes[1].labels, Vec::<String>::new());
}

#[test]
fn syntax_and_schema_mistakes_name_line_column_and_key() {
    check(
        "name = \"acme-berlin\"",
        "name = \"acme-berlin",
        "2:20:name",
        "invalid basic string",
    );
    check(
        "owner = ",
        "owner_name = ",
        "3:1:owner_name",
        "unknown field",
    );
    check(
        "location = \"Berlin, DE\"\n",
        "",
        "1:1:location",
        "missing field `location`",
    );
    check(
        "cores = 8",
        "cores = \"eight\"",
        "15:9:classes[0].cores",
        "invalid type",
    );
    check(
        "cores = 32",
        "cores = -4",
        "27:9:classes[1].cores",
        "expected u32",
    );
    check(
        "os = \"linux\"",
        "os = \"windows\"",
        "24:6:classes[1].os",
        "unknown variant",
    );
    check(
        "bmc = \"redfish\"",
        "bmc = \"ilo\"",
        "7:7:bmc",
        "unknown variant",
    );
    check(
        "count = 4",
        "count = 4\ncount = 5",
        "24:1:classes[1].count",
        "duplicate key",
    );
    check(
        "price_per_hour = 0.12\n",
        "price_per_hour = 0.12\ngpu = true\n",
        "19:1:classes[0].gpu",
        "unknown field",
    );
}

#[test]
fn value_mistakes_are_all_reported_with_their_key() {
    check(
        "schema = 1",
        "schema = 2",
        "1:10:schema",
        "unsupported schema 2",
    );
    check(
        "name = \"acme-berlin\"",
        "name = \"acme-paris\"",
        "2:8:name",
        "acme-berlin.toml",
    );
    check(
        "name = \"acme-berlin\"",
        "name = \"Acme Berlin\"",
        "2:8:name",
        "lowercase",
    );
    check(
        "owner = \"Acme Hosting GmbH\"",
        "owner = \"  \"",
        "3:9:owner",
        "empty",
    );
    check("ops@acme.example", "call us", "4:11:contact", "e-mail");
    check(
        "https://rack1.acme.example:9443",
        "rack1.acme.example",
        "6:9:agent",
        "URL",
    );
    check(
        "https://rack1.acme.example:9443",
        "https://root:pw@rack1.acme.example",
        "6:9:agent",
        "without user",
    );
    check(
        "count = 12",
        "count = 0",
        "11:9:classes[0].count",
        "must be 1-10000",
    );
    check(
        "count = 12",
        "count = 1000000",
        "11:9:classes[0].count",
        "not 1000000",
    );
    check(
        "cores = 8",
        "cores = 0",
        "15:9:classes[0].cores",
        "must be 1-1024",
    );
    check(
        "memory_gb = 16",
        "memory_gb = 0",
        "16:13:classes[0].memory_gb",
        "must be",
    );
    check(
        "price_per_hour = 0.12",
        "price_per_hour = -0.5",
        "18:18:classes[0].price_per_hour",
        "not -0.5",
    );
    check(
        "price_per_hour = 0.12",
        "price_per_hour = nan",
        "18:18:classes[0].price_per_hour",
        "not NaN",
    );
    check(
        "price_per_hour = 0.60",
        "price_per_hour = 5000.0",
        "30:18:classes[1].price_per_hour",
        "dollars",
    );
    check(
        "name = \"epyc\"",
        "name = \"m2-mini\"",
        "22:8:classes[1].name",
        "duplicate class",
    );
    check(
        "labels = [\"xcode-16\"]",
        "labels = [\"ok\", \"bad label\"]",
        "19:10:classes[0].labels[1]",
        "",
    );
    check(
        "labels = [\"xcode-16\"]",
        "labels = [\"a\", \"a\"]",
        "19:10:classes[0].labels[1]",
        "duplicate label",
    );
}

#[test]
fn several_value_mistakes_come_out_together() {
    let text = GOOD
        .replacen("count = 12", "count = 0", 1)
        .replacen("price_per_hour = 0.60", "price_per_hour = -1", 1)
        .replacen("ops@acme.example", "nobody", 1);
    let diagnostics = parse_entry("x.toml", None, &text).unwrap_err();
    let keys: Vec<&str> = diagnostics.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        ["contact", "classes[0].count", "classes[1].price_per_hour"]
    );
}

#[test]
fn a_registry_finds_duplicates_across_files_and_searches_offers() {
    let other = GOOD
        .replace("acme-berlin", "bits-lyon")
        .replace("price_per_hour = 0.12", "price_per_hour = 0.45")
        .replace("cores = 8", "cores = 12");
    let files = vec![
        ("acme-berlin.toml".to_owned(), GOOD.to_owned()),
        ("bits-lyon.toml".to_owned(), other.clone()),
        ("more/bits-lyon.toml".to_owned(), other),
        ("broken.toml".to_owned(), "schema = ".to_owned()),
    ];
    let registry = Registry::from_files(&files);
    assert!(!registry.is_valid());
    let shown: Vec<String> = registry
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].starts_with("more/bits-lyon.toml:2:1: name: provider \"bits-lyon\" is also defined in bits-lyon.toml"), "{shown:#?}");
    assert!(shown[1].starts_with("broken.toml:1:"), "{shown:#?}");
    assert_eq!(registry.entries.len(), 2);

    let query = Query {
        os: Some(Os::Macos),
        arch: Some(Arch::Arm64),
        min_cores: Some(8),
        max_price: Some(0.5),
        ..Query::default()
    };
    let offers: Vec<(String, f64)> = registry
        .search(&query)
        .iter()
        .map(|o| (o.entry.name.clone(), o.class.price_per_hour))
        .collect();
    assert_eq!(
        offers,
        [
            ("acme-berlin".to_owned(), 0.12),
            ("bits-lyon".to_owned(), 0.45)
        ]
    );
    let offers = registry.search(&Query {
        min_cores: Some(10),
        ..query.clone()
    });
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].entry.name, "bits-lyon");
    assert!(
        registry
            .search(&Query {
                max_price: Some(0.1),
                ..query.clone()
            })
            .is_empty()
    );
    assert_eq!(registry.search(&Query::default()).len(), 4);
    let offers = registry.search(&Query {
        labels: vec!["xcode-16".into()],
        ..Query::default()
    });
    assert_eq!(offers.len(), 2);
}

#[test]
fn load_dir_reads_toml_files_and_skips_hidden_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("providers")).unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join("providers/acme-berlin.toml"), GOOD).unwrap();
    std::fs::write(dir.path().join(".git/config.toml"), "not = [valid").unwrap();
    std::fs::write(dir.path().join("README.md"), "# registry").unwrap();
    let registry = nimbus_baremetal::registry::load_dir(dir.path()).unwrap();
    assert!(registry.is_valid(), "{:?}", registry.diagnostics);
    assert_eq!(registry.entries.keys().collect::<Vec<_>>(), ["acme-berlin"]);
    let one = nimbus_baremetal::registry::load_dir(&dir.path().join("providers/acme-berlin.toml"))
        .unwrap();
    assert_eq!(one.entries.len(), 1);
}
