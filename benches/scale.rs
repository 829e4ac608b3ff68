//! The scale benchmark (issue 5): the real release binary against generated estates served by the
//! test ARM emulator, plus the offline path on a 100k-VM snapshot. It prints its figures; nothing
//! here asserts a time.
//!
//! ```text
//! cargo bench --bench scale                  # 1k, 10k and 50k VMs live, 100k offline
//! cargo bench --bench scale -- --quick       # 1k and 10k live, 100k offline
//! CVM_BENCH_QUICK=1 cargo bench --bench scale
//! CVM_BENCH_RUNS=3 cargo bench --bench scale # each case three times
//! ```
//!
//! Live: the emulator answers after a fixed 20 ms, pages lists by 100 and enforces ARM's read
//! bucket per subscription and principal (250 burst, 25/s), answering 429 with `Retry-After`
//! past it. The binary runs `check --format json` with its default concurrency. The floor is
//! max(longest chain of dependent requests × latency, requests × latency / concurrency).

#[path = "../tests/support/emulator.rs"]
mod emulator;
#[path = "../tests/support/synth.rs"]
mod synth;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cvm_backup::snapshot::{ListRead, Snapshot, SubscriptionSnapshot};
use emulator::{Config, Emulator};
use serde_json::Value;
use synth::{Raw, Spec};

const BIN: &str = env!("CARGO_BIN_EXE_cvm-backup");
const TOKEN: &str = "bench-token-3c1d9e0f5a7b";
/// `--concurrency`'s default (src/cli.rs).
const DEFAULT_CONCURRENCY: u64 = 16;

struct Child {
    spawned: Instant,
    wall: Duration,
    /// CPU time of the child (user + system).
    cpu: Duration,
    code: i32,
    /// Peak resident set of the child, in KiB.
    max_rss_kib: i64,
}

/// `wait4` on our own child: its exit code, peak RSS in KiB and CPU time (user + system).
fn wait_measured(pid: libc::pid_t) -> (i32, i64, Duration) {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data that wait4 fills in; `pid` is our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return (-1, 0, Duration::ZERO);
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (
        code,
        usage.ru_maxrss,
        tv(usage.ru_utime) + tv(usage.ru_stime),
    )
}

/// Launcher mode (`scale --measure REPORT -- PROGRAM ARGS…`): runs PROGRAM with the stdio it was
/// given, and writes "EXIT_CODE PEAK_RSS_KIB CPU_MS" to REPORT.
///
/// Why a launcher: Linux folds the RSS high-water mark of the process image an `exec` replaces
/// into `ru_maxrss`, so a child forked from this benchmark (which holds the whole estate) would
/// report the benchmark's own RSS. Forked from this small launcher instead, it reports its own.
// The child is reaped by `wait_measured` (wait4), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn launcher(args: &[String]) -> i32 {
    let (Some(report), Some(program)) = (args.first(), args.get(2)) else {
        return 2;
    };
    let Ok(child) = Command::new(program).args(&args[3..]).spawn() else {
        return 127;
    };
    let (code, rss, cpu) = wait_measured(child.id() as libc::pid_t);
    let _ = std::fs::write(report, format!("{code} {rss} {}", cpu.as_millis()));
    code
}

/// Runs the binary with a scrubbed environment, through the launcher; wall time, exit code and
/// peak RSS.
// The launcher is reaped by `wait_measured` (wait4), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[String], stdout: Stdio) -> Child {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("rusage");
    let mut c = Command::new(std::env::current_exe().expect("the benchmark's own path"));
    c.arg("--measure").arg(&report).arg("--");
    // CVM_BENCH_WRAP="perf record -o /tmp/perf.data --" runs the binary under a profiler.
    if let Ok(w) = std::env::var("CVM_BENCH_WRAP") {
        c.args(w.split_whitespace());
    }
    c.arg(BIN);
    for k in emulator::ambient_vars() {
        c.env_remove(k);
    }
    c.env("CVM_BACKUP_NOW", "2026-11-28T20:00:00Z")
        .env("AZURE_CREDENTIAL_KIND", "azurecli")
        .current_dir(std::env::temp_dir())
        .args(args)
        .args(
            std::env::var("CVM_BENCH_ARGS")
                .map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("start the launcher");
    let stderr = child.stderr.take();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let _ = wait_measured(child.id() as libc::pid_t);
    let wall = start.elapsed();
    let (code, max_rss_kib, cpu) = std::fs::read_to_string(&report)
        .ok()
        .and_then(|r| {
            let mut f = r.split(' ');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                Duration::from_millis(f.next()?.parse().ok()?),
            ))
        })
        .unwrap_or((-1, 0, Duration::ZERO));
    let err = drain.join().unwrap_or_default();
    if let Ok(f) = std::env::var("CVM_BENCH_STDERR") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
        {
            let _ = writeln!(f, "==== {}\n{err}", args.join(" "));
        }
    }
    if !(0..=3).contains(&code) {
        eprintln!("cvm-backup exited {code}:\n{err}");
    }
    Child {
        spawned: start,
        wall,
        cpu,
        code,
        max_rss_kib,
    }
}

fn pages(n: usize, page: usize) -> usize {
    n.div_ceil(page).max(1)
}

fn items(l: &Option<ListRead<Raw>>) -> usize {
    l.as_ref().map(|l| l.items().len()).unwrap_or(0)
}

/// Where the live run reads its inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Arm,
    ResourceGraph,
}

impl Source {
    fn flag(self) -> &'static str {
        match self {
            Source::Arm => "arm",
            Source::ResourceGraph => "resource-graph",
        }
    }
}

/// The longest chain of requests that depend on each other, by the data (a lower bound, whatever
/// the order the tool chooses): the subscription list; then each inventory list page by page (with
/// Resource Graph: each query over a batch of up to 300 subscriptions, 1000 rows a page); a
/// vault's children after its vault list; Key Vault role assignments (then the role definitions
/// they name) and Managed HSM RBAC after the DES, Key Vault and HSM lists that say which key
/// stores sit behind a confidential DES.
fn longest_chain(snap: &Snapshot<Raw>, page: usize, source: Source) -> usize {
    type Pick = fn(&SubscriptionSnapshot<Raw>) -> &Option<ListRead<Raw>>;
    let kinds: [Pick; 7] = [
        |s| &s.virtual_machines,
        |s| &s.disks,
        |s| &s.snapshots,
        |s| &s.disk_encryption_sets,
        |s| &s.recovery_services_vaults,
        |s| &s.key_vaults,
        |s| &s.managed_hsms,
    ];
    // The longest run of pages one kind of list takes.
    let list_pages = |pick: Pick| -> usize {
        match source {
            Source::Arm => snap
                .subscriptions
                .iter()
                .map(|s| pages(items(pick(s)), page))
                .max()
                .unwrap_or(1),
            Source::ResourceGraph => snap
                .subscriptions
                .chunks(300)
                .map(|b| pages(b.iter().map(|s| items(pick(s))).sum(), 1000))
                .max()
                .unwrap_or(1),
        }
    };
    let subs_list = pages(snap.subscriptions.len(), page);
    let lists = kinds.iter().map(|k| list_pages(*k)).max().unwrap_or(1);
    // A vault's children: after the first page that lists it.
    let mut vault_chain = 0;
    for s in &snap.subscriptions {
        let before = match source {
            Source::Arm => pages(items(&s.recovery_services_vaults), page),
            Source::ResourceGraph => 1,
        };
        if let Some(l) = &s.recovery_services_vaults {
            for v in l.items() {
                let v: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                if let Some(ch) = snap.vaults.get(v["id"].as_str().unwrap_or_default()) {
                    let children = pages(items(&ch.policies), page)
                        .max(pages(items(&ch.protected_items), page));
                    vault_chain = vault_chain.max(before + children);
                }
            }
        }
    }
    let keys_known = subs_list + kinds[3..].iter().map(|k| list_pages(*k)).max().unwrap_or(1);
    let kv = snap
        .key_vault_role_assignments
        .values()
        .map(|l| pages(l.items().len(), page) + 1)
        .max()
        .unwrap_or(0);
    let hsm = snap
        .managed_hsms
        .values()
        .map(|h| {
            pages(items(&h.role_assignments), page).max(pages(items(&h.role_definitions), page))
        })
        .max()
        .unwrap_or(0);
    (subs_list + lists)
        .max(subs_list + vault_chain)
        .max(keys_known + kv)
        .max(keys_known + hsm)
}

/// Resource Graph's quota in the emulator: the documented example, 15 queries per 5-second
/// window, unless CVM_BENCH_ARG_QUOTA says "QUERIES/SECONDS" or "none".
fn arg_quota() -> Option<(u32, Duration)> {
    match std::env::var("CVM_BENCH_ARG_QUOTA") {
        Ok(v) if v == "none" || v == "0" => None,
        Ok(v) => {
            let (q, s) = v.split_once('/')?;
            Some((q.parse().ok()?, Duration::from_secs(s.parse().ok()?)))
        }
        Err(_) => Some((15, Duration::from_secs(5))),
    }
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

struct LiveRow {
    source: Source,
    vms: usize,
    subs: usize,
    requests: usize,
    wall: Duration,
    chain: usize,
    floor: Duration,
    throttled: usize,
    complete: String,
    rss_kib: i64,
    cpu: Duration,
    max_in_flight: usize,
    /// Spawn to first request (start-up), first request to last answer (the reads), last
    /// answer to exit (evaluation and rendering).
    phases: (Duration, Duration, Duration),
}

fn live(vms: usize, subs: usize, source: Source) -> LiveRow {
    let snap = synth::estate(&Spec::new(vms, subs));
    let mut config = Config::azure_like();
    // CVM_BENCH_LATENCY_MS overrides the 20 ms per answer (0: what the reads cost by themselves).
    if let Some(ms) = std::env::var("CVM_BENCH_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.latency = Duration::from_millis(ms);
    }
    let latency = config.latency;
    let page = config.page_size;
    if source == Source::ResourceGraph {
        config.arg_quota = arg_quota();
    }
    let chain = longest_chain(&snap, page, source);
    let emu = Emulator::from_snapshot(&snap, config);
    drop(snap);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("report.json");
    let args: Vec<String> = [
        "check",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        &emu.graph(),
        "--access-token",
        TOKEN,
        "--no-config",
        "--no-progress",
        "--source",
        source.flag(),
        "--format",
        "json",
        "--output",
        out.to_str().unwrap_or_default(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = run(&args, Stdio::null());
    let doc: Value = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let complete = match &doc["complete"] {
        Value::Bool(b) => b.to_string(),
        _ => format!("no report (exit {})", child.code),
    };
    let reported = doc["summary"]["vms"].as_u64().unwrap_or(0) as usize;
    if reported != vms {
        eprintln!("warning: the report has {reported} VMs, the estate {vms}");
    }
    let requests = emu.request_count();
    let seen = emu.requests();
    let started = emu.started();
    let first = seen.iter().map(|s| started + s.at).min();
    let last = seen.iter().map(|s| started + s.at + latency).max();
    let exit = child.spawned + child.wall;
    // CVM_BENCH_TIMELINE=FILE: one line per request (ms since spawn, status, path), to see
    // where the reads idle.
    if let Ok(f) = std::env::var("CVM_BENCH_TIMELINE") {
        let lines: Vec<String> = seen
            .iter()
            .map(|s| {
                let at = (started + s.at).saturating_duration_since(child.spawned);
                format!("{:.1} {} {}", at.as_secs_f64() * 1000.0, s.status, s.path)
            })
            .collect();
        let _ = std::fs::write(format!("{f}.{vms}x{subs}"), lines.join("\n"));
    }
    let phases = match (first, last) {
        (Some(f), Some(l)) => (
            f.saturating_duration_since(child.spawned),
            l.saturating_duration_since(f),
            exit.saturating_duration_since(l),
        ),
        _ => Default::default(),
    };
    let floor =
        (latency * chain as u32).max(latency * requests as u32 / DEFAULT_CONCURRENCY as u32);
    LiveRow {
        source,
        vms,
        subs,
        requests,
        wall: child.wall,
        chain,
        floor,
        throttled: emu.throttled() + emu.arg_throttled(),
        complete,
        rss_kib: child.max_rss_kib,
        cpu: child.cpu,
        max_in_flight: emu.max_in_flight(),
        phases,
    }
}

struct OfflineRow {
    vms: usize,
    subs: usize,
    file_mib: f64,
    wall: Duration,
    code: i32,
    rss_kib: i64,
    cpu: Duration,
}

fn offline(file: &Path, vms: usize, subs: usize) -> OfflineRow {
    let args: Vec<String> = [
        "check",
        "--from",
        file.to_str().unwrap_or_default(),
        "--no-config",
        "--format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = run(&args, Stdio::null());
    OfflineRow {
        vms,
        subs,
        file_mib: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        wall: child.wall,
        code: child.code,
        rss_kib: child.max_rss_kib,
        cpu: child.cpu,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        std::process::exit(launcher(&args[2..]));
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("CVM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let runs: usize = std::env::var("CVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    // (VMs, subscriptions): 10k over 10 subscriptions is the target case — a large tenant's
    // production subscriptions hold about a thousand VMs each.
    let arm = Source::Arm;
    let mut cases = vec![(1_000, 10, arm), (10_000, 10, arm)];
    if !quick {
        cases.push((10_000, 100, arm));
        cases.push((50_000, 200, arm));
        cases.push((10_000, 10, Source::ResourceGraph));
        cases.push((50_000, 200, Source::ResourceGraph));
    }
    // CVM_BENCH_CASES="10000x10,50000x200,10000x10rg" picks the live cases ("rg": Resource
    // Graph); "" runs none.
    if let Ok(list) = std::env::var("CVM_BENCH_CASES") {
        cases = list
            .split(',')
            .filter_map(|c| {
                let c = c.trim();
                let (c, source) = match c.strip_suffix("rg") {
                    Some(c) => (c, Source::ResourceGraph),
                    None => (c, arm),
                };
                let (v, s) = c.split_once('x')?;
                Some((v.parse().ok()?, s.parse().ok()?, source))
            })
            .collect();
    }
    let offline_too = std::env::var("CVM_BENCH_OFFLINE").map_or(true, |v| v != "0");

    println!("# cvm-backup scale benchmark");
    println!();
    println!("machine: {}", machine());
    println!("binary: {BIN}");
    println!(
        "emulator: 20 ms per answer, pages of 100, ARM read bucket 250 burst / 25 per s per subscription; Resource Graph: 1000 rows a page, quota {}; default --concurrency {DEFAULT_CONCURRENCY}",
        match arg_quota() {
            Some((q, w)) => format!("{q} queries per {} s", w.as_secs()),
            None => "none".into(),
        }
    );
    println!();
    println!("## Live (`check --format json` against the emulator)");
    println!();
    println!("| source | VMs | subscriptions | requests | requests/VM | wall | longest chain | floor | wall/floor | reads/floor | 429s | complete | peak RSS | CPU | start-up / reads / evaluate+render | max in flight |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|");
    for &(vms, subs, source) in &cases {
        for _ in 0..runs {
            let r = live(vms, subs, source);
            println!(
                "| {} | {} | {} | {} | {:.4} | {:.0} ms | {} | {:.0} ms | {:.2} | {:.2} | {} | {} | {:.0} MiB | {:.0} ms | {:.0} / {:.0} / {:.0} ms | {} |",
                r.source.flag(),
                r.vms,
                r.subs,
                r.requests,
                r.requests as f64 / r.vms as f64,
                r.wall.as_secs_f64() * 1000.0,
                r.chain,
                r.floor.as_secs_f64() * 1000.0,
                r.wall.as_secs_f64() / r.floor.as_secs_f64(),
                r.phases.1.as_secs_f64() / r.floor.as_secs_f64(),
                r.throttled,
                r.complete,
                mib(r.rss_kib),
                r.cpu.as_secs_f64() * 1000.0,
                r.phases.0.as_secs_f64() * 1000.0,
                r.phases.1.as_secs_f64() * 1000.0,
                r.phases.2.as_secs_f64() * 1000.0,
                r.max_in_flight,
            );
        }
    }

    if !offline_too {
        return;
    }
    println!();
    println!("## Offline (`check --from FILE --format json > /dev/null`)");
    println!();
    // CVM_BENCH_OFFLINE_CASE="10000x10" sizes the offline estate (default 100k VMs over 100).
    let (vms, subs) = std::env::var("CVM_BENCH_OFFLINE_CASE")
        .ok()
        .and_then(|c| {
            let (v, s) = c.trim().split_once('x')?;
            Some((v.parse().ok()?, s.parse().ok()?))
        })
        .unwrap_or((100_000, 100));
    // Kept after the run (target/tmp), to profile or re-run by hand.
    let file =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("scale-estate-{vms}x{subs}.json"));
    let snap = synth::estate(&Spec::new(vms, subs));
    synth::write(&snap, &file);
    drop(snap);
    println!("snapshot: {}", file.display());
    println!();
    println!("| VMs | subscriptions | snapshot | wall | peak RSS | CPU | exit |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for _ in 0..runs {
        let r = offline(&file, vms, subs);
        println!(
            "| {} | {} | {:.0} MiB | {:.0} ms | {:.0} MiB | {:.0} ms | {} |",
            r.vms,
            r.subs,
            r.file_mib,
            r.wall.as_secs_f64() * 1000.0,
            mib(r.rss_kib),
            r.cpu.as_secs_f64() * 1000.0,
            r.code
        );
    }
}
