//! Data parallelism over slices with scoped threads: pure work (rule evaluation, rendering) on
//! every core, results in input order.

/// How many threads to use: the machine's cores, at most 8.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Runs `f` on up to `threads` consecutive chunks of `items`, each on its own scoped thread,
/// and returns the results in chunk order. A panic in `f` is re-raised here.
pub fn map_chunks<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return vec![f(items)];
    }
    let per = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(move || f(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(x) => x,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// A producer on this thread hands jobs to `workers` threads, each folding the jobs it takes
/// into its own `R` with `work`. Returns what `produce` returned and each worker's `R`. At most
/// `queue` jobs wait at a time (beyond that the producer waits). A panic in a worker is
/// re-raised here.
pub fn pipeline<J: Send, R: Default + Send, P>(
    workers: usize,
    queue: usize,
    produce: impl FnOnce(&mut (dyn FnMut(J) + Send)) -> P,
    work: impl Fn(&mut R, J) + Sync,
) -> (P, Vec<R>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<J>(queue);
    let rx = std::sync::Mutex::new(rx);
    let (rx, work) = (&rx, &work);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(move || {
                    let mut r = R::default();
                    // A poisoned lock means another worker panicked, re-raised on join.
                    while let Some(job) = rx.lock().ok().and_then(|q| q.recv().ok()) {
                        work(&mut r, job);
                    }
                    r
                })
            })
            .collect();
        // A send fails only when every worker is gone (panicked): the join says why.
        let p = produce(&mut |job| drop(tx.send(job)));
        drop(tx);
        let rs = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect();
        (p, rs)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_covers_every_item() {
        let items: Vec<u32> = (0..1001).collect();
        for threads in [1, 2, 3, 8] {
            let parts = super::map_chunks(&items, threads, |c| c.to_vec());
            assert_eq!(parts.concat(), items);
        }
        assert_eq!(super::map_chunks(&[] as &[u32], 4, <[u32]>::len), vec![0]);
    }

    #[test]
    fn a_pipeline_hands_every_job_to_one_worker() {
        for workers in [1, 3] {
            let (n, parts) = super::pipeline(
                workers,
                2,
                |send| {
                    (0..1000u32).for_each(&mut *send);
                    1000
                },
                |acc: &mut Vec<u32>, j| acc.push(j),
            );
            let mut all = parts.concat();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }
}
