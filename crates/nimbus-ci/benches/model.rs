//! Prints how fast the model parses and plans a workflow and masks log output. Never asserts a
//! time; run with `cargo bench -p nimbus-ci`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nimbus_ci::{Context, Limits, Masker, parse, plan_run};

const WORKFLOW: &str = include_str!("../tests/fixtures/good/ci.yml");

fn per_op(n: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

fn main() {
    let limits = Limits::default();
    let context = Context {
        git_ref: "refs/heads/main".into(),
        ref_name: "main".into(),
        ..Context::default()
    };
    println!("| operation | time |");
    println!("| --- | --- |");
    let parse_time = per_op(2_000, || {
        black_box(parse("ci.yml", black_box(WORKFLOW), &limits).unwrap());
    });
    println!(
        "| parse ci.yml ({} bytes, 5 jobs) | {parse_time:?} |",
        WORKFLOW.len()
    );
    let wf = parse("ci.yml", WORKFLOW, &limits).unwrap();
    let plan_time = per_op(2_000, || {
        black_box(plan_run(&wf, &context, &limits).unwrap());
    });
    println!("| plan_run ci.yml | {plan_time:?} |");

    // 50 MB of log lines in 64 KiB chunks, as a step printing 50 MB would deliver them.
    let line =
        b"test result: ok. 19 passed; 0 failed; token=abcdefghijklmnopqrstuvwxyz0123456789 done\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
    let total = 50 * 1024 * 1024;
    println!();
    println!("| masker, 50 MiB in 64 KiB chunks | time | throughput |");
    println!("| --- | --- | --- |");
    for n_secrets in [0usize, 1, 10, 100] {
        let secrets: Vec<String> = (0..n_secrets)
            .map(|i| {
                if i == 0 {
                    "abcdefghijklmnopqrstuvwxyz0123456789".to_owned()
                } else {
                    format!("secret-value-{i:04}-xyz")
                }
            })
            .collect();
        let mut masker = Masker::new(&secrets);
        let start = Instant::now();
        let mut out = 0usize;
        let mut fed = 0usize;
        while fed < total {
            out += masker.push(black_box(&chunk)).len();
            fed += chunk.len();
        }
        out += masker.finish().len();
        let elapsed = start.elapsed();
        black_box(out);
        let mib_s = (fed as f64 / (1024.0 * 1024.0)) / elapsed.as_secs_f64();
        println!("| {n_secrets} secrets | {elapsed:.2?} | {mib_s:.0} MiB/s |");
    }
}
