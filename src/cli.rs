//! Command-line surface, as fixed by CONTRACT.md section 1.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cvm-backup",
    version,
    about = "Preflight checker: can Azure Backup protect your confidential VMs?",
    long_about = "Reads your Azure estate (or a saved snapshot), runs the CVMB rule catalogue over \
every VM and tells, per VM, whether Azure Backup of a confidential VM is viable, why not, and the \
command that fixes it.\n\nExit codes: 0 ok, 1 a VM is not viable, 2 usage or input error, \
3 incomplete (unknowns), 4 nothing could be evaluated (authentication or connection)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every VM in scope and report whether backup is viable.
    Check(CheckArgs),
    /// Read the estate from Azure and save it as a snapshot for `check --from`.
    ///
    /// The snapshot holds tenant metadata (resource ids, principal object ids, access policies);
    /// it is written with owner-only permissions (0600).
    Collect(CollectArgs),
    /// List the rule catalogue of a ruleset.
    Rules(RulesArgs),
    /// Explain one rule: what it checks, why, and how to fix it.
    Explain(ExplainArgs),
    /// Write a commented cvm-backup.toml template.
    Init(InitArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Scope")]
pub struct ScopeArgs {
    /// Subscription to check (repeatable). Default: every subscription the identity can list.
    #[arg(
        long = "subscription",
        value_name = "ID",
        env = "AZURE_SUBSCRIPTION_ID",
        value_delimiter = ','
    )]
    pub subscriptions: Vec<String>,
    /// Only report VMs in this resource group (repeatable).
    #[arg(long = "resource-group", value_name = "NAME")]
    pub resource_groups: Vec<String>,
    /// Only report this VM, by name or ARM id (repeatable).
    #[arg(long = "vm", value_name = "NAME_OR_ID")]
    pub vms: Vec<String>,
    /// Check the subscriptions under this management group (repeatable), as Azure Resource
    /// Graph finds them; implies --source resource-graph. With --subscription, a subscription
    /// must be in both.
    #[arg(long = "management-group", value_name = "ID")]
    pub management_groups: Vec<String>,
}

/// Where the inventory (VMs, disks, snapshots, DESs, vaults, Key Vaults, HSMs) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// One ARM list per subscription and resource type.
    Arm,
    /// Azure Resource Graph queries over batches of up to 300 subscriptions.
    ResourceGraph,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Azure Resource Manager endpoint. http:// is accepted only for loopback hosts.
    #[arg(
        long,
        value_name = "URL",
        env = "CVM_BACKUP_ARM_ENDPOINT",
        default_value = "https://management.azure.com"
    )]
    pub arm_endpoint: String,
    /// Microsoft Graph endpoint. http:// is accepted only for loopback hosts.
    #[arg(
        long,
        value_name = "URL",
        env = "CVM_BACKUP_GRAPH_ENDPOINT",
        default_value = "https://graph.microsoft.com"
    )]
    pub graph_endpoint: String,
    /// Bearer token used as-is for every request (ARM, Graph, Managed HSM). Default: azure_identity's credential chain.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CVM_BACKUP_ACCESS_TOKEN",
        hide_env_values = true
    )]
    pub access_token: Option<String>,
    /// Object id of the "Backup Management Service" service principal. Default: looked up in Microsoft Graph.
    #[arg(long, value_name = "OBJECT_ID", env = "CVM_BACKUP_PRINCIPAL_ID")]
    pub backup_principal_id: Option<String>,
    /// Where the inventory comes from; features, vault contents and key permissions are always
    /// read from ARM and the data planes. [default: arm; resource-graph with --management-group]
    #[arg(long, value_enum, value_name = "SOURCE", env = "CVM_BACKUP_SOURCE")]
    pub source: Option<SourceArg>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Overall time limit for collection, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
    /// Time limit for one HTTP request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub request_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Junit,
    Sarif,
    Markdown,
    Github,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Colour in the table output. NO_COLOR is honoured; never colour when stdout is not a terminal (auto).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// No progress indicator on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Quiet: no progress and no warnings on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// More logs on stderr (-v: requests, -vv: debug). Tokens are never logged.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Evaluate a snapshot file (from `collect`) instead of reading Azure.
    #[arg(long, value_name = "SNAPSHOT")]
    pub from: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Ruleset (support matrix version) to apply; default 2026-01.
    #[arg(long, value_name = "NAME")]
    pub ruleset: Option<String>,
    /// Config file [env: CVM_BACKUP_CONFIG] (default: ./cvm-backup.toml when present).
    #[arg(long, value_name = "FILE", conflicts_with = "no_config")]
    pub config: Option<PathBuf>,
    /// Ignore any config file (also the one CVM_BACKUP_CONFIG names).
    #[arg(long)]
    pub no_config: bool,
    /// Lowest severity that fails the run (exit 1); `never` turns exit 1 and 3 into 0.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub fail_on: Option<FailOn>,
    /// Expired or unused waivers are errors (exit 2) instead of warnings.
    #[arg(long)]
    pub strict: bool,
    /// Ignore all waivers (re-audit).
    #[arg(long)]
    pub no_waivers: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CollectArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Where to write the snapshot (owner-only permissions).
    #[arg(long, short = 'o', value_name = "SNAPSHOT")]
    pub output: PathBuf,
    /// Config file, for opt_out_features to read [env: CVM_BACKUP_CONFIG] (default:
    /// ./cvm-backup.toml when present).
    #[arg(long, value_name = "FILE", conflicts_with = "no_config")]
    pub config: Option<PathBuf>,
    /// Ignore any config file (also the one CVM_BACKUP_CONFIG names).
    #[arg(long)]
    pub no_config: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RulesArgs {
    #[arg(long, value_enum, default_value_t = RulesFormat::Table)]
    pub format: RulesFormat,
    /// Ruleset whose catalogue to show.
    #[arg(long, value_name = "NAME")]
    pub ruleset: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Rule name or ref, e.g. key-access or CVMB008.
    pub rule: String,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to write the template.
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        default_value = "cvm-backup.toml"
    )]
    pub output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}
