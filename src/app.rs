//! The binary's edge: flags -> snapshot -> estate -> report -> renderer -> exit code.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cli::{self, CheckArgs, Cli, ColorChoice, Command, Format};
use crate::collect::{self, CollectError, CollectOptions};
use crate::config::{self, Config, LoadError};
use crate::engine::{self, Policy, Scope};
use crate::estate::Estate;
use crate::output::{self, diag, json_v1};
use crate::report::{self, FailOn};
use crate::rules::{self, Settings};
use crate::ruleset;
use crate::snapshot::Snapshot;

/// An error that ends the run with a specific exit code and one clear message.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Usage or input error: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Nothing could be evaluated (authentication, connection): exit 4.
    #[error("{0}")]
    Unavailable(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Usage(_) => 2,
            AppError::Unavailable(_) => 4,
        }
    }
}

impl From<CollectError> for AppError {
    fn from(e: CollectError) -> Self {
        match e {
            CollectError::Usage(m) => AppError::Usage(m),
            CollectError::Auth(m) | CollectError::Unreachable(m) => AppError::Unavailable(m),
        }
    }
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            diag("error", &e.to_string());
            e.exit_code()
        }
    }
}

/// The clock: `CVM_BACKUP_NOW` (RFC 3339) fixes it for reproducible tests and audits.
pub fn now() -> Result<OffsetDateTime, AppError> {
    match std::env::var("CVM_BACKUP_NOW") {
        Ok(s) if !s.is_empty() => OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| {
            AppError::Usage(format!("CVM_BACKUP_NOW {s:?} is not an RFC 3339 time: {e}"))
        }),
        _ => Ok(OffsetDateTime::now_utc()),
    }
}

pub fn run(cli: Cli) -> Result<i32, AppError> {
    match cli.command {
        Command::Check(args) => check(args),
        Command::Collect(args) => collect_cmd(args),
        Command::Rules(args) => rules_cmd(args),
        Command::Explain(args) => explain(&args.rule),
        Command::Init(args) => init(&args.output, args.force),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "cvm-backup", &mut buf);
            write_out(&String::from_utf8_lossy(&buf), None)?;
            Ok(0)
        }
    }
}

fn write_out(text: &str, path: Option<&Path>) -> Result<(), AppError> {
    output::emit(text, path).map_err(|e| match path {
        Some(p) => AppError::Usage(format!("cannot write {}: {e}", p.display())),
        None => AppError::Usage(format!("cannot write to stdout: {e}")),
    })
}

fn use_color(choice: ColorChoice, to_file: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            !to_file
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    }
}

fn load_ruleset(name: Option<&str>) -> Result<ruleset::Ruleset, AppError> {
    ruleset::load(name.unwrap_or(ruleset::DEFAULT)).map_err(AppError::Usage)
}

fn collect_options(
    conn: &cli::ConnectionArgs,
    scope: &cli::ScopeArgs,
    extra_features: Vec<String>,
    show_progress: bool,
) -> CollectOptions {
    CollectOptions {
        arm_endpoint: conn.arm_endpoint.clone(),
        graph_endpoint: conn.graph_endpoint.clone(),
        access_token: conn.access_token.clone(),
        subscriptions: scope.subscriptions.clone(),
        source: match conn.source {
            Some(cli::SourceArg::Arm) => collect::Source::Arm,
            Some(cli::SourceArg::ResourceGraph) => collect::Source::ResourceGraph,
            None if !scope.management_groups.is_empty() => collect::Source::ResourceGraph,
            None => collect::Source::Arm,
        },
        management_groups: scope.management_groups.clone(),
        backup_principal_id: conn.backup_principal_id.clone(),
        extra_features,
        concurrency: conn.concurrency as usize,
        timeout: Duration::from_secs(conn.timeout),
        request_timeout: Duration::from_secs(conn.request_timeout),
        show_progress,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| AppError::Unavailable(format!("cannot start the async runtime: {e}")))
}

fn progress_wanted(out: &cli::OutputArgs) -> bool {
    !out.no_progress && !out.quiet && std::io::stderr().is_terminal()
}

/// Loads the config file (CONTRACT.md section 6); every problem in it is printed, then exit 2.
fn load_config(explicit: Option<&Path>, no_config: bool) -> Result<Config, AppError> {
    match config::load(explicit, no_config) {
        Ok(c) => Ok(c.unwrap_or_default()),
        Err(LoadError::Read(m)) => Err(AppError::Usage(m)),
        Err(LoadError::Invalid { file, errors }) => {
            let n = errors.len();
            for e in errors.iter().take(n.saturating_sub(1)) {
                diag("error", &e.to_string());
            }
            let last = errors.last().map(ToString::to_string).unwrap_or_default();
            Err(AppError::Usage(format!(
                "{last}\n{file}: {n} error{} in the config file; fix {}, or run with --no-config to ignore the file",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" }
            )))
        }
    }
}

/// Logs on stderr through `tracing`: warnings by default, one line per HTTP request with `-v`,
/// debug with `-vv`, errors only with `-q`. Other crates never go below `warn`, whatever the
/// level: azure_core's debug output prints request headers, bearer token included.
pub fn init_logging(out: &cli::OutputArgs) {
    let own = match (out.quiet, out.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let others = if out.quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::new(format!("{others},cvm_backup={own}"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

fn check(args: CheckArgs) -> Result<i32, AppError> {
    init_logging(&args.out);
    let now = now()?;
    let cfg = load_config(args.config.as_deref(), args.no_config)?;
    // A command-line flag wins over the same setting in the file.
    let ruleset = load_ruleset(args.ruleset.as_deref().or(cfg.ruleset.as_deref()))?;
    let mut settings = Settings::from_ruleset(&ruleset);
    cfg.apply_to(&mut settings);
    let fail_on = match args.fail_on {
        Some(cli::FailOn::Error) => FailOn::Error,
        Some(cli::FailOn::Warning) => FailOn::Warning,
        Some(cli::FailOn::Never) => FailOn::Never,
        None => cfg.fail_on.unwrap_or_default(),
    };
    let mut policy = Policy::new(now.date());
    policy.overrides = cfg.overrides.clone();
    if !args.no_waivers {
        policy.waivers = cfg.waivers.clone();
    }

    let principal = args.connection.backup_principal_id.as_deref();
    if args.from.is_some() && !args.scope.management_groups.is_empty() {
        return Err(AppError::Usage(
            "--management-group is resolved by Azure Resource Graph; it cannot narrow a snapshot (--from). Use --subscription.".into(),
        ));
    }
    let estate = match &args.from {
        Some(path) => {
            // Streamed: the file is never held whole (see `load`).
            let t = std::time::Instant::now();
            let estate = crate::load::estate_from_file(path, principal)
                .map_err(|e| AppError::Usage(e.to_string()))?;
            tracing::debug!(
                "read {} into the estate in {:?}, {}",
                path.display(),
                t.elapsed(),
                rss()
            );
            estate
        }
        None => {
            let opts = collect_options(
                &args.connection,
                &args.scope,
                settings.opt_out_features.clone(),
                progress_wanted(&args.out),
            );
            // Each subscription is built into the estate while the other reads go on.
            let t = std::time::Instant::now();
            let estate = crate::live::estate(runtime()?, &opts, principal)?;
            tracing::debug!("read Azure into the estate in {:?}, {}", t.elapsed(), rss());
            estate
        }
    };
    let scope = Scope {
        subscriptions: if args.from.is_some() {
            args.scope.subscriptions.clone()
        } else {
            Vec::new()
        },
        resource_groups: args.scope.resource_groups.clone(),
        vms: args.scope.vms.clone(),
    };
    let t = std::time::Instant::now();
    let eval = engine::evaluate(&estate, &settings, &policy, &scope, now);
    tracing::debug!(
        "evaluated {} VMs in {:?}, {}",
        eval.report.vms.len(),
        t.elapsed(),
        rss()
    );
    let report = eval.report;
    if report.vms.is_empty()
        && !args.out.quiet
        && (!scope.vms.is_empty() || !scope.resource_groups.is_empty())
    {
        diag(
            "warning",
            "no VM matched --vm/--resource-group; names are compared case-insensitively, --vm also takes an ARM id",
        );
    }

    let problems = config::waiver_problems(&policy.waivers, &eval.waiver_used, policy.today);
    if args.strict && !problems.is_empty() {
        for p in &problems {
            diag("error", p.message());
        }
        return Err(AppError::Usage(format!(
            "--strict: {} waiver{} in {} expired or matched nothing; renew or remove {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            cfg.file,
            if problems.len() == 1 { "it" } else { "them" }
        )));
    }
    if !args.out.quiet {
        for p in &problems {
            diag("warning", p.message());
        }
    }

    // The exit code comes from the report and --fail-on only, never from the format.
    let code = report::exit_code(&report, fail_on);
    let to_file = args.output.is_some();
    let text = match args.format {
        // Streamed: the document can be large.
        Format::Json => {
            let t = std::time::Instant::now();
            output::emit_with(args.output.as_deref(), |w| json_v1::write(&report, w)).map_err(
                |e| match &args.output {
                    Some(p) => AppError::Usage(format!("cannot write {}: {e}", p.display())),
                    None => AppError::Usage(format!("cannot write to stdout: {e}")),
                },
            )?;
            tracing::debug!("rendered JSON in {:?}, {}", t.elapsed(), rss());
            // A large estate is millions of small allocations: the process is about to exit,
            // so let the OS reclaim them at once instead of freeing them one by one.
            std::mem::forget(report);
            std::mem::forget(estate);
            return Ok(code);
        }
        Format::Table => output::table::render(&report, use_color(args.out.color, to_file)),
        Format::Junit => output::junit::render(&report)
            .map_err(|e| AppError::Usage(format!("cannot write the JUnit report: {e}")))?,
        Format::Sarif => output::sarif::render(&report),
        Format::Markdown => output::markdown::render(&report),
        Format::Github => output::github::render(&report),
    };
    write_out(&text, args.output.as_deref())?;
    Ok(code)
}

fn collect_cmd(args: cli::CollectArgs) -> Result<i32, AppError> {
    init_logging(&args.out);
    // Fail before reading Azure, not after: the directory must exist.
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(AppError::Usage(format!(
                "cannot write {}: directory {} does not exist",
                args.output.display(),
                dir.display()
            )));
        }
    }
    // The config's opt_out_features are read too, so CVMB005 can be evaluated from the snapshot.
    let cfg = load_config(args.config.as_deref(), args.no_config)?;
    let opts = collect_options(
        &args.connection,
        &args.scope,
        cfg.opt_out_features.clone(),
        progress_wanted(&args.out),
    );
    let mut snapshot = runtime()?.block_on(collect::collect(&opts))?;
    snapshot.collected_at = now()?.format(&Rfc3339).ok();
    write_snapshot(&args.output, &snapshot)?;
    let estate = Estate::from_snapshot(&snapshot, None);
    Ok(if estate.errors.is_empty() { 0 } else { 3 })
}

/// Writes a snapshot with owner-only permissions: it holds tenant metadata.
fn write_snapshot<I: serde::Serialize>(
    path: &Path,
    snapshot: &Snapshot<I>,
) -> Result<(), AppError> {
    let text = snapshot.to_json_pretty();
    let err = |e: std::io::Error| AppError::Usage(format!("cannot write {}: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        // An existing file keeps its mode on open: tighten it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, text).map_err(err)?;
    Ok(())
}

fn rules_cmd(args: cli::RulesArgs) -> Result<i32, AppError> {
    let rs = load_ruleset(args.ruleset.as_deref())?;
    let text = match args.format {
        cli::RulesFormat::Json => {
            let doc = json_v1::RulesV1 {
                ruleset: json_v1::Ruleset {
                    name: rs.name.clone(),
                    as_of: rs.as_of.clone(),
                },
                rules: rules::all().iter().map(|r| r.meta().into()).collect(),
            };
            let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
            s.push('\n');
            s
        }
        cli::RulesFormat::Table => output::rules_table(&rs),
    };
    write_out(&text, None)?;
    Ok(0)
}

fn explain(rule: &str) -> Result<i32, AppError> {
    let Some(r) = rules::find(rule) else {
        let valid: Vec<String> = rules::all()
            .iter()
            .map(|r| format!("{} ({})", r.meta().name, r.meta().reference))
            .collect();
        return Err(AppError::Usage(format!(
            "unknown rule {rule:?}; valid rules: {}",
            valid.join(", ")
        )));
    };
    write_out(&output::explain(r.meta()), None)?;
    Ok(0)
}

fn init(path: &Path, force: bool) -> Result<i32, AppError> {
    if path.exists() && !force {
        return Err(AppError::Usage(format!(
            "{} already exists; use --force to overwrite it",
            path.display()
        )));
    }
    std::fs::write(path, crate::output::CONFIG_TEMPLATE)
        .map_err(|e| AppError::Usage(format!("cannot write {}: {e}", path.display())))?;
    diag("info", &format!("wrote {}", path.display()));
    Ok(0)
}

/// Resident and peak memory of this process, for `-vv` timings (Linux; empty elsewhere).
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(now), Some(peak)) => format!("RSS {now} (peak {peak})"),
        _ => String::new(),
    }
}
