//! `check` against Azure: the estate built while the reads are still in flight.
//!
//! The collector hands over each subscription as soon as all its lists and features are in,
//! and each vault's children as soon as its three reads are ([`collect::collect_with`]).
//! Workers on every core turn them into typed records ([`Parts`], as `check --from` does for
//! each part of a file) and free their JSON text there, while the other reads go on. After the last answer only the role data and HSMs (small) are left to build:
//! [`Parts::into_estate`] merges them with the parts into the same estate
//! [`Estate::from_snapshot`] builds from the whole snapshot (`tests/live.rs` compares the live
//! report with `collect` + `check --from`).

use std::time::Instant;

use crate::collect::plan::Handed;
use crate::collect::{self, CollectError, CollectOptions};
use crate::estate::{Estate, Parts};

/// Parts handed over and not yet built, at most: beyond, the collector waits for a worker.
const QUEUE: usize = 1024;

/// Reads Azure into the estate. `principal` is `--backup-principal-id`.
pub fn estate(
    runtime: tokio::runtime::Runtime,
    opts: &CollectOptions,
    principal: Option<&str>,
) -> Result<Estate, CollectError> {
    let t = Instant::now();
    // Each part's JSON is built and freed on a worker, not on the thread that waits for the
    // last answer.
    let (snap, parts) = crate::par::pipeline(
        crate::par::threads(),
        QUEUE,
        |send| {
            let snap = runtime.block_on(collect::collect_with(opts, Some(&mut |h| send(h))));
            tracing::debug!("collected in {:?}", t.elapsed());
            snap
        },
        |parts: &mut Parts, h: Handed| match h {
            Handed::Subscription(i, sub) => parts.subscription(i, &sub),
            Handed::Vault(id, children) => parts.vault(id, &children),
        },
    );
    // Nothing is left to run on it; its idle connections need no orderly goodbye.
    runtime.shutdown_background();
    let snap = snap?;
    tracing::debug!("subscriptions and vaults built in {:?}", t.elapsed());
    let estate = Parts::into_estate(parts, &snap, principal);
    tracing::debug!("estate built in {:?}", t.elapsed());
    // The role data and HSMs: freed off the path to the report.
    std::thread::spawn(move || drop(snap));
    Ok(estate)
}
