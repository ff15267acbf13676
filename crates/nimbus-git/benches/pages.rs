//! Web page timings on a large repository: the tree page with its last-commit column (root and
//! a subdirectory), a highlighted blob page, blame of a long-lived file and a path's history,
//! cold (caches cleared before each request) and warm, p50/p99 over loopback HTTP. Prints a
//! table; asserts nothing.
//!
//!   cargo bench -p nimbus-git --bench pages -- /path/to/bare/repo.git   # e.g. a git.git clone
//!   cargo bench -p nimbus-git --bench pages                            # synthetic history
//!
//! Env: BENCH_COMMITS (synthetic, default 30000), BENCH_TREE_DIR, BENCH_BLOB, BENCH_BLAME.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_git::AppState;
use nimbus_git::config::Settings;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {} in {}: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A history shaped like a long-lived project: many root entries, some touched often, some
/// almost never (so the last-commit walk has to go deep), nested directories.
fn synthesize(dir: &Path, commits: usize) {
    git(dir, &["init", "-q", "--bare"]);
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut out = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    let mut seed: u64 = 7;
    let mut rnd = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    let data = |out: &mut dyn std::io::Write, body: &[u8]| {
        writeln!(out, "data {}", body.len()).unwrap();
        out.write_all(body).unwrap();
        out.write_all(b"\n").unwrap();
    };
    let root_files = 120;
    let dirs = 60;
    let per_dir = 40;
    for i in 1..=commits {
        writeln!(out, "commit refs/heads/main\nmark :{i}").unwrap();
        write!(
            out,
            "author Dev{} <dev@example.com> {} +0000\ncommitter Dev <dev@example.com> {} +0000\n",
            i % 17,
            1_500_000_000 + i * 600,
            1_500_000_000 + i * 600
        )
        .unwrap();
        data(
            &mut out,
            format!("change {i}: synthetic history\n").as_bytes(),
        );
        if i > 1 {
            writeln!(out, "from :{}", i - 1).unwrap();
        }
        if i == 1 {
            for f in 0..root_files {
                writeln!(out, "M 644 inline root{f:03}.c").unwrap();
                data(
                    &mut out,
                    format!("/* file {f} */\nint f{f}(void) {{ return {f}; }}\n").as_bytes(),
                );
            }
            for d in 0..dirs {
                for f in 0..per_dir {
                    writeln!(out, "M 644 inline dir{d:02}/sub/file{f:03}.rs").unwrap();
                    data(&mut out, format!("fn f{f}() {{}}\n").as_bytes());
                }
            }
            continue;
        }
        for _ in 0..1 + rnd(3) {
            // Skewed: low-numbered entries change often, high-numbered ones rarely.
            let pick = rnd(1000);
            let (path, body) = if pick < 700 {
                let d = rnd(dirs).min(rnd(dirs));
                let f = rnd(per_dir);
                (
                    format!("dir{d:02}/sub/file{f:03}.rs"),
                    format!("fn f{f}() {{ /* {i} */ }}\n"),
                )
            } else {
                let f = (rnd(root_files) * rnd(root_files)) / root_files;
                (
                    format!("root{f:03}.c"),
                    format!("/* file {f}, change {i} */\nint f{f}(void) {{ return {i}; }}\n"),
                )
            };
            writeln!(out, "M 644 inline {path}").unwrap();
            data(&mut out, body.as_bytes());
        }
    }
    drop(out);
    assert!(child.wait().expect("fast-import").success());
    git(dir, &["repack", "-q", "-a", "-d"]);
}

/// Commit `n` commits on top of `head` in the bare repository (each rewrites one root file, as
/// a push would), point the branch HEAD names at the last, and return its id.
fn push_on_top(repo: &Path, head: &str, root: &[(String, String, u64)], n: usize) -> String {
    let files: Vec<&String> = root
        .iter()
        .filter(|(_, kind, _)| kind == "blob")
        .map(|(name, _, _)| name)
        .collect();
    let index = repo.join("bench-index");
    let with_index = |args: &[&str]| -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo)
            .env("GIT_INDEX_FILE", &index)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut parent = head.to_owned();
    with_index(&["read-tree", head]);
    for i in 0..n {
        let name = files[i % files.len().max(1)];
        let blob = Command::new("git")
            .args(["hash-object", "-w", "--stdin"])
            .current_dir(repo)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("pushed change {i}\n").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        let blob = String::from_utf8(blob.stdout).unwrap().trim().to_owned();
        with_index(&[
            "update-index",
            "--cacheinfo",
            &format!("100644,{blob},{name}"),
        ]);
        let tree = with_index(&["write-tree"]).trim().to_owned();
        parent = with_index(&[
            "commit-tree",
            &tree,
            "-p",
            &parent,
            "-m",
            &format!("pushed change {i}"),
        ])
        .trim()
        .to_owned();
    }
    let branch = git(repo, &["symbolic-ref", "HEAD"]).trim().to_owned();
    git(repo, &["update-ref", &branch, &parent]);
    let _ = std::fs::remove_file(&index);
    parent
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tmp = tempfile::Builder::new()
        .prefix("nimbus-git-pages-bench")
        .tempdir()
        .expect("tempdir");
    let (source, label) = match args.first() {
        Some(path) => (PathBuf::from(path), path.clone()),
        None => {
            let commits: usize = std::env::var("BENCH_COMMITS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(30_000);
            let dir = tmp.path().join("synthetic.git");
            std::fs::create_dir_all(&dir).unwrap();
            let started = Instant::now();
            synthesize(&dir, commits);
            eprintln!(
                "synthesized {commits} commits in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            (
                dir,
                format!("synthetic ({commits} commits, 120 root files, 60 dirs)"),
            )
        }
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings::for_tests(tmp.path().join("data"));
    let (url, state) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::open(settings, url.clone()).await.unwrap().state;
        let app = nimbus_git::app(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, state)
    });
    let http = reqwest::Client::new();
    let status = rt.block_on(async {
        http.post(format!("{url}/api/v1/repos"))
            .basic_auth("owner", Some("owner-password"))
            .json(&serde_json::json!({"name": "bench", "private": false}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 201, "create repository");
    let entry = state.repos.get("bench").unwrap();
    std::fs::remove_dir_all(&entry.path).unwrap();
    let out = Command::new("git")
        .args(["clone", "-q", "--bare", "--shared"])
        .arg(&source)
        .arg(&entry.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    // One file, not a split chain: a chain in a `--shared` clone would name the source's graph
    // files, which live in the other object directory.
    git(
        &entry.path,
        &[
            "commit-graph",
            "write",
            "--reachable",
            "--changed-paths",
            "--no-progress",
        ],
    );
    let graph_secs = started.elapsed().as_secs_f64();
    entry.invalidate();
    let n_commits = git(&entry.path, &["rev-list", "--count", "HEAD"])
        .trim()
        .to_owned();
    let head = git(&entry.path, &["rev-parse", "HEAD"]).trim().to_owned();

    // Pick what to measure.
    let root: Vec<(String, String, u64)> = git(&entry.path, &["ls-tree", "-l", "HEAD"])
        .lines()
        .filter_map(|l| {
            let (meta, name) = l.split_once('\t')?;
            let mut parts = meta.split_whitespace();
            let _mode = parts.next()?;
            let kind = parts.next()?.to_owned();
            let _id = parts.next()?;
            let size = parts.next()?.parse().unwrap_or(0);
            Some((name.to_owned(), kind, size))
        })
        .collect();
    let tree_dir = std::env::var("BENCH_TREE_DIR").unwrap_or_else(|_| {
        root.iter()
            .filter(|(_, k, _)| k == "tree")
            .map(|(n, _, _)| n.clone())
            .find(|n| n == "Documentation")
            .or_else(|| {
                root.iter()
                    .find(|(_, k, _)| k == "tree")
                    .map(|(n, _, _)| n.clone())
            })
            .unwrap_or_default()
    });
    let blob = std::env::var("BENCH_BLOB").unwrap_or_else(|_| {
        root.iter()
            .filter(|(n, k, s)| k == "blob" && n.ends_with(".c") && *s < 400_000)
            .max_by_key(|(_, _, s)| *s)
            .map(|(n, _, _)| n.clone())
            .unwrap_or_default()
    });
    let blame = std::env::var("BENCH_BLAME").unwrap_or_else(|_| blob.clone());
    let blob_lines = git(&entry.path, &["cat-file", "-p", &format!("HEAD:{blame}")])
        .lines()
        .count();

    // The walk behind the cold root page, for the record.
    let root_walk = |commit: &str| {
        let repo = entry.gix().unwrap();
        entry.history.clear();
        let started = Instant::now();
        let tree = repo
            .find_commit(commit.parse::<gix::ObjectId>().unwrap())
            .unwrap()
            .tree_id()
            .unwrap()
            .detach();
        let entries = entry.history.entries(&repo, tree).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
        let answer = entry
            .history
            .last_commits(
                &repo,
                commit.parse().unwrap(),
                "",
                &names,
                Instant::now() + Duration::from_secs(60),
            )
            .unwrap();
        (
            started.elapsed().as_secs_f64() * 1000.0,
            answer.commits_walked,
            answer.trees_read,
        )
    };
    entry.history.clear_all();
    let (walk_ms, walked, trees) = root_walk(&head);

    // What maintenance does after a push: the branch heads' answers kept on disk.
    let started = Instant::now();
    let indexed = entry
        .history
        .index_heads(
            &entry.gix().unwrap(),
            Instant::now() + Duration::from_secs(600),
        )
        .unwrap();
    let index_secs = started.elapsed().as_secs_f64();

    // Then a push of ten commits on top, each changing one root file, not yet maintained.
    let pushed = push_on_top(&entry.path, &head, &root, 10);
    entry.invalidate();
    let (inc_ms, inc_walked, inc_trees) = {
        entry.history.forget(pushed.parse().unwrap(), "");
        root_walk(&pushed)
    };

    println!();
    println!("nimbus-git web pages on {label}");
    println!(
        "{n_commits} commits reachable from HEAD; commit-graph with changed-path filters written in {graph_secs:.1}s; {} root entries; {} cores",
        root.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "cold root walk from nothing (in-process): {walk_ms:.1} ms, {walked} commits visited, {trees} trees read"
    );
    println!(
        "maintenance kept the root answers of {indexed} branch heads in {index_secs:.1}s; after 10 more commits the root walk takes {inc_ms:.1} ms ({inc_walked} commits visited, {inc_trees} trees read)"
    );
    println!(
        "times are loopback HTTP requests (server time plus ~0.1 ms); cold = every cache cleared before each request, the answers kept on disk too unless the row says they were kept; OS page cache warm"
    );
    println!();
    println!("| page | n | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    let get = |path: &str| -> Duration {
        rt.block_on(async {
            let started = Instant::now();
            let resp = http.get(format!("{url}{path}")).send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            let elapsed = started.elapsed();
            assert!(status.is_success(), "GET {path}: {status}\n{body}");
            elapsed
        })
    };
    // A restarted server: memory caches gone, answers kept on disk still there.
    let clear = || {
        entry.history.clear();
        state.web.clear();
    };
    // Nothing computed before, on disk or in memory.
    let clear_all = || {
        entry.history.clear_all();
        state.web.clear();
    };
    let measure_with = |name: &str, path: &str, before: &dyn Fn(), n: usize| {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            before();
            samples.push(get(path));
        }
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        println!("| {name} (cold) | {n} | {p50:.1} | {p99:.1} |");
    };
    let measure = |name: &str, path: &str, cold: bool, n: usize| {
        let mut samples = Vec::with_capacity(n);
        if !cold {
            get(path);
        }
        for _ in 0..n {
            if cold {
                clear_all();
            }
            samples.push(get(path));
        }
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        let kind = if cold { "cold" } else { "warm" };
        println!("| {name} ({kind}) | {n} | {p50:.1} | {p99:.1} |");
    };
    let enc = |p: &str| p.replace(' ', "%20");
    let old_head = format!("/bench/tree/{head}");
    measure_with(
        "tree /, last-commit column, nothing kept on disk",
        &old_head,
        &clear_all,
        5,
    );
    entry
        .history
        .index_heads(
            &entry.gix().unwrap(),
            Instant::now() + Duration::from_secs(600),
        )
        .unwrap();
    measure_with(
        "tree /, last-commit column, answer kept by maintenance",
        &old_head,
        &clear,
        20,
    );
    let new_head = format!("/bench/tree/{pushed}");
    let pushed_id: gix::ObjectId = pushed.parse().unwrap();
    measure_with(
        "tree /, last-commit column, 10 commits pushed since maintenance",
        &new_head,
        &|| {
            clear();
            entry.history.forget(pushed_id, "");
        },
        20,
    );
    measure("tree /, last-commit column", &new_head, false, 200);
    if !tree_dir.is_empty() {
        let path = format!("/bench/tree/HEAD/{}", enc(&tree_dir));
        measure(&format!("tree {tree_dir}/"), &path, true, 10);
        measure(&format!("tree {tree_dir}/"), &path, false, 200);
    }
    if !blob.is_empty() {
        let path = format!("/bench/blob/HEAD/{}", enc(&blob));
        measure(&format!("blob {blob}, highlighted"), &path, true, 5);
        measure(&format!("blob {blob}, highlighted"), &path, false, 100);
        let path = format!("/bench/blame/HEAD/{}", enc(&blame));
        measure(
            &format!("blame {blame} ({blob_lines} lines)"),
            &path,
            true,
            3,
        );
        let path = format!("/bench/log/HEAD/{}", enc(&blame));
        measure(&format!("history of {blame}"), &path, true, 5);
    }
}
