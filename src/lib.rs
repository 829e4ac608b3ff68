//! cvm-backup: preflight checker for Azure Backup of confidential VMs.
//!
//! Data flows one way: collect -> snapshot -> estate -> rules -> report -> renderers.

pub mod app;
pub mod armid;
pub mod cli;
pub mod collect;
pub mod config;
pub mod endpoint;
pub mod engine;
pub mod estate;
pub mod live;
pub mod load;
pub mod output;
pub mod par;
pub mod report;
pub mod rules;
pub mod ruleset;
pub mod snapshot;
