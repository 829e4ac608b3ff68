//! `check` against Azure: the estate built while the reads are still in flight.
//!
//! The collector hands over each subscription as soon as all its lists and features are in,
//! and each vault's children as soon as its three reads are ([`collect::collect_with`]).
//! Workers on every core turn them into typed records ([`SubscriptionPart`], [`VaultPart`], as
//! `check --from` does for each part of a file) and free their JSON text there, while the other
//! reads go on. After the last answer only the role data and HSMs (small) are left to build:
//! [`Estate::from_parts`] merges them with the parts into the same estate
//! [`Estate::from_snapshot`] builds from the whole snapshot (`tests/live.rs` compares the live
//! report with `collect` + `check --from`).

use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Instant;

use crate::collect::plan::Handed;
use crate::collect::{self, CollectError, CollectOptions};
use crate::estate::{Estate, SubscriptionPart, VaultPart};

/// Reads Azure into the estate. `principal` is `--backup-principal-id`.
pub fn estate(
    runtime: tokio::runtime::Runtime,
    opts: &CollectOptions,
    principal: Option<&str>,
) -> Result<Estate, CollectError> {
    let t = Instant::now();
    let (tx, rx) = channel::<Handed>();
    let rx = Mutex::new(rx);
    let (snap, mut built) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..crate::par::threads())
            .map(|_| s.spawn(|| build_parts(&rx)))
            .collect();
        let mut sink = move |part: Handed| {
            // The workers only stop once the channel is closed: a send cannot fail.
            let _ = tx.send(part);
        };
        let snap = runtime.block_on(collect::collect_with(opts, Some(&mut sink)));
        // Closes the channel: the workers finish the parts queued and stop.
        drop(sink);
        tracing::debug!("collected in {:?}", t.elapsed());
        let mut built = Built::default();
        for w in workers {
            match w.join() {
                Ok(b) => {
                    built.subscriptions.extend(b.subscriptions);
                    built.vaults.extend(b.vaults);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (snap, built)
    });
    // Nothing is left to run on it; its idle connections need no orderly goodbye.
    runtime.shutdown_background();
    let snap = snap?;
    tracing::debug!("subscriptions and vaults built in {:?}", t.elapsed());
    // In the snapshot's order: subscriptions as listed, vaults by id (the snapshot's map).
    built.subscriptions.sort_unstable_by_key(|(i, _)| *i);
    built.vaults.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let parts = built.subscriptions.into_iter().map(|(_, p)| p).collect();
    let vaults = built.vaults.into_iter().map(|(_, p)| p).collect();
    let estate = Estate::from_parts(parts, Some(vaults), &snap, principal);
    tracing::debug!("estate built in {:?}", t.elapsed());
    // The role data and HSMs: freed off the path to the report.
    std::thread::spawn(move || drop(snap));
    Ok(estate)
}

#[derive(Default)]
struct Built {
    subscriptions: Vec<(usize, SubscriptionPart)>,
    vaults: Vec<(String, VaultPart)>,
}

/// A worker: builds what is handed over until the channel is closed. The JSON text of each
/// part is freed here, not on the thread that waits for the last answer.
fn build_parts(rx: &Mutex<Receiver<Handed>>) -> Built {
    let mut out = Built::default();
    loop {
        // A poisoned lock means another worker panicked; that panic is re-raised on join.
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => break,
        };
        match next {
            Ok(Handed::Subscription(i, sub)) => {
                out.subscriptions.push((i, SubscriptionPart::build(&sub)));
            }
            Ok(Handed::Vault(id, children)) => {
                let part = VaultPart::build(&id, &children);
                out.vaults.push((id, part));
            }
            Err(_) => break,
        }
    }
    out
}
