//! `check` against Azure: the estate built while the reads are still in flight.
//!
//! The collector hands over each subscription as soon as all its lists and features are in
//! ([`collect::collect_with`]). Workers on every core turn it into typed records
//! ([`SubscriptionPart`], as `check --from` does for each subscription of a file) and free its
//! JSON text there, while the vault children and the key stores' RBAC are still being read.
//! After the last answer only those (small) are left to build: [`Estate::from_parts`] merges
//! them with the parts into the same estate [`Estate::from_snapshot`] builds from the whole
//! snapshot (`tests/live.rs` compares the live report with `collect` + `check --from`).

use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Instant;

use crate::collect::api::Item;
use crate::collect::{self, CollectError, CollectOptions};
use crate::estate::{Estate, SubscriptionPart};
use crate::snapshot::SubscriptionSnapshot;

/// Reads Azure into the estate. `principal` is `--backup-principal-id`.
pub fn estate(
    runtime: tokio::runtime::Runtime,
    opts: &CollectOptions,
    principal: Option<&str>,
) -> Result<Estate, CollectError> {
    let t = Instant::now();
    let (tx, rx) = channel::<(usize, SubscriptionSnapshot<Item>)>();
    let rx = Mutex::new(rx);
    let (snap, parts) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..crate::par::threads())
            .map(|_| s.spawn(|| build_parts(&rx)))
            .collect();
        let mut sink = move |i: usize, sub: SubscriptionSnapshot<Item>| {
            // The workers only stop once the channel is closed: a send cannot fail.
            let _ = tx.send((i, sub));
        };
        let snap = runtime.block_on(collect::collect_with(opts, Some(&mut sink)));
        // Closes the channel: the workers finish the subscriptions queued and stop.
        drop(sink);
        tracing::debug!("collected in {:?}", t.elapsed());
        let mut parts = Vec::new();
        for w in workers {
            match w.join() {
                Ok(p) => parts.extend(p),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (snap, parts)
    });
    // Nothing is left to run on it; its idle connections need no orderly goodbye.
    runtime.shutdown_background();
    let snap = snap?;
    tracing::debug!("subscriptions built in {:?}", t.elapsed());
    let mut parts = parts;
    parts.sort_unstable_by_key(|(i, _)| *i);
    let parts: Vec<SubscriptionPart> = parts.into_iter().map(|(_, p)| p).collect();
    let estate = Estate::from_parts(parts, None, &snap, principal);
    tracing::debug!("estate built in {:?}", t.elapsed());
    // The vault children, role data and HSMs: freed off the path to the report.
    std::thread::spawn(move || drop(snap));
    Ok(estate)
}

/// A worker: builds subscriptions until the channel is closed.
fn build_parts(
    rx: &Mutex<Receiver<(usize, SubscriptionSnapshot<Item>)>>,
) -> Vec<(usize, SubscriptionPart)> {
    let mut out = Vec::new();
    loop {
        // A poisoned lock means another worker panicked; that panic is re-raised on join.
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => break,
        };
        let Ok((i, sub)) = next else { break };
        out.push((i, SubscriptionPart::build(&sub)));
        // Its JSON text is freed here, not on the thread that waits for the last answer.
        drop(sub);
    }
    out
}
