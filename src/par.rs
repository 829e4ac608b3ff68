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
}
