//! `nimbusctl registry` end to end: the real binary on a registry checkout and on a Git URL
//! (a bare repository cloned by the real `git`). No daemon is involved.

use std::path::Path;
use std::process::{Command, Output};

const ACME: &str = r#"schema = 1
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

[[classes]]
name = "m2-pro"
count = 2
os = "macos"
arch = "arm64"
cpu = "Apple M2 Pro"
cores = 12
memory_gb = 32
disk_gb = 512
price_per_hour = 0.80
"#;

const BITS: &str = r#"schema = 1
name = "bits-lyon"
owner = "Bits SARL"
contact = "https://bits.example/contact"
location = "Lyon, FR"
agent = "https://agent.bits.example"
bmc = "ipmi"

[[classes]]
name = "epyc"
count = 4
os = "linux"
arch = "x86_64"
cpu = "AMD EPYC 9354"
cores = 32
memory_gb = 128
disk_gb = 1920
price_per_hour = 0.45
"#;

fn nimbusctl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_nimbusctl"))
        .args(args)
        .env_remove("NIMBUS_REGISTRY")
        .output()
        .expect("run nimbusctl");
    eprintln!(
        "$ nimbusctl {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn registry() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("providers")).unwrap();
    std::fs::write(dir.path().join("providers/acme-berlin.toml"), ACME).unwrap();
    std::fs::write(dir.path().join("providers/bits-lyon.toml"), BITS).unwrap();
    dir
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn validate_a_checkout_and_a_git_url() {
    let dir = registry();
    let path = dir.path().to_str().unwrap();
    let out = nimbusctl(&["registry", "validate", path]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("is valid: 2 provider(s), 3 hardware class(es)"));

    // The same registry published as a Git repository, validated by URL.
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "registry"]);
    let url = format!("file://{path}");
    let out = nimbusctl(&["registry", "validate", &url]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("2 provider(s)"));

    let out = nimbusctl(&["registry", "validate", "file:///nonexistent/registry.git"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("git clone"));
    let out = nimbusctl(&["registry", "validate", "/nonexistent/registry"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or directory"));
}

#[test]
fn validate_prints_every_mistake_with_file_line_column_and_key() {
    let dir = registry();
    let broken = ACME
        .replace("count = 12", "count = 0")
        .replace("price_per_hour = 0.80", "price_per_hour = -1.0")
        .replace("ops@acme.example", "somebody");
    std::fs::write(dir.path().join("providers/acme-berlin.toml"), broken).unwrap();
    std::fs::write(
        dir.path().join("providers/typo.toml"),
        BITS.replace("name = \"bits-lyon\"", "name = \"typo\"")
            .replace("cores = ", "coars = "),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("providers/copy.toml"),
        BITS.replace("bits-lyon", "copy"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("providers/bits-copy.toml"),
        BITS.replace("bits-lyon", "copy"),
    )
    .unwrap();
    let out = nimbusctl(&["registry", "validate", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "providers/acme-berlin.toml:4:11: contact: must be an e-mail address or an https URL",
            "providers/acme-berlin.toml:11:9: classes[0].count: must be 1-10000, not 0",
            "providers/acme-berlin.toml:29:18: classes[1].price_per_hour: must be 0-1000 dollars per hour, not -1",
            "providers/bits-copy.toml:2:8: name: is \"copy\" but the file is bits-copy.toml; they must match",
            "providers/typo.toml:15:1: classes[0].coars: unknown field `coars`, expected one of `name`, `count`, `os`, `arch`, `cpu`, `cores`, `memory_gb`, `disk_gb`, `price_per_hour`, `labels`",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 problem(s) found"));

    let out = nimbusctl(&[
        "--json",
        "registry",
        "validate",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["diagnostics"][1]["key"], "classes[0].count");
    assert_eq!(report["diagnostics"][1]["line"], 11);
}

#[test]
fn list_and_search_filter_the_offers() {
    let dir = registry();
    let path = dir.path().to_str().unwrap();
    let out = nimbusctl(&[
        "--json",
        "registry",
        "search",
        "--registry",
        path,
        "--arch",
        "arm64",
        "--os",
        "macos",
        "--min-cores",
        "8",
        "--max-price",
        "0.5",
    ]);
    assert!(out.status.success());
    let offers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<(String, String)> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["entry"]["name"].as_str().unwrap().to_owned(),
                o["class"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(names, [("acme-berlin".to_owned(), "m2-mini".to_owned())]);

    let out = nimbusctl(&["registry", "list", "--registry", path]);
    assert!(out.status.success());
    let table = stdout(&out);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "a header and three classes, cheapest first");
    assert!(rows[0].contains("PROVIDER") && rows[0].contains("$/HOUR"));
    assert!(rows[1].contains("m2-mini") && rows[1].contains("0.120"));
    assert!(rows[2].contains("epyc") && rows[2].contains("ipmi"));
    assert!(rows[3].contains("m2-pro"));

    let out = nimbusctl(&["registry", "search", "--registry", path, "--arch", "sparc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be arm64 or x86_64"));
    let out = nimbusctl(&[
        "registry",
        "search",
        "--registry",
        path,
        "--max-price",
        "-1",
    ]);
    assert!(!out.status.success());
}
