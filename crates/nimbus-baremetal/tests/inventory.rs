//! The inventory of the machine running the tests, checked against independent sources.

use std::process::Command;

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(out.status.success(), "{program} {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn this_machine_is_inventoried() {
    let inventory = nimbus_baremetal::inventory::collect().await.unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&inventory).unwrap());
    let nproc: u32 = output("nproc", &["--all"]).trim().parse().unwrap();
    assert_eq!(inventory.cpu.threads, nproc);
    assert!(!inventory.cpu.model.is_empty());
    let free_bytes: u64 = output("free", &["-b"])
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(inventory.memory_bytes, free_bytes);
    assert_eq!(inventory.hostname, output("uname", &["-n"]).trim());
    assert_eq!(inventory.kernel, output("uname", &["-r"]).trim());
    assert_eq!(inventory.os, "linux");
    // Every interface `ip` knows, less loopback.
    let links = output("ip", &["-o", "link", "show"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap())
        .filter(|n| *n != "lo")
        .collect();
    let mut got: Vec<&str> = inventory.nics.iter().map(|n| n.name.as_str()).collect();
    got.sort();
    let mut names = names;
    names.sort();
    assert_eq!(got, names);
    // Disks: those lsblk lists as whole disks with a size.
    let lsblk = output("lsblk", &["-b", "-d", "-n", "-o", "NAME,SIZE,TYPE"]);
    let disks: Vec<&str> = lsblk
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 3 && f[2] == "disk" && f[1] != "0" && !f[0].starts_with("zram"))
        .map(|f| f[0])
        .collect();
    assert_eq!(
        inventory
            .disks
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        disks
    );
}
