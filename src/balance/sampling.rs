//! Random choices of the balancers: weighted draws (Vose's alias method) and
//! the mixer that turns a counter into random bits.

/// Vose's alias method: draws index `i` with probability `weights[i] / sum` in
/// O(1) from two tables built in O(n).
pub(crate) struct AliasTable {
    /// Chance, out of 2^32, of keeping column `i` rather than taking its alias.
    keep: Vec<u32>,
    alias: Vec<u32>,
}

impl AliasTable {
    pub(crate) fn new(weights: &[u64]) -> AliasTable {
        let n = weights.len();
        let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        // Each column holds total/n of weight; scaled by n so all sums are integers.
        let mut scaled: Vec<u128> = weights.iter().map(|w| u128::from(*w) * n as u128).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < total);
        let mut keep = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = ((scaled[s] << 32) / total.max(1)).min(u128::from(u32::MAX)) as u32;
            alias[s] = l as u32;
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        AliasTable { keep, alias }
    }

    pub(crate) fn len(&self) -> usize {
        self.keep.len()
    }

    /// The index drawn by the 64 random bits `random`.
    pub(crate) fn sample(&self, random: u64) -> usize {
        // High bits pick the column, low bits the side: independent enough.
        let column = (((random >> 32) * self.keep.len() as u64) >> 32) as usize;
        if (random as u32) < self.keep[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

/// A 64-bit mixer (splitmix64's finalizer): a counter in, well-spread bits out.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Random bits for this thread: a per-thread counter fed through
/// [`splitmix64`], so concurrent picks share no cache line.
pub(crate) fn thread_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        splitmix64(next)
    })
}

/// A different start for each thread.
fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static THREADS: AtomicU64 = AtomicU64::new(0);
    splitmix64(THREADS.fetch_add(1, Ordering::Relaxed) ^ 0x2545_f491_4f6c_dd1d)
}

/// A number below `n` from the 64 random bits `random` (Lemire's multiply-shift).
pub(crate) fn below(random: u64, n: usize) -> usize {
    (((random >> 32) * n as u64) >> 32) as usize
}

/// Whether an event of chance `p` (0 to 1) happens, drawn from `random`.
pub(crate) fn chance(random: u64, p: f64) -> bool {
    ((random >> 11) as f64) < p * (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_table_draws_in_proportion_to_weight() {
        let table = AliasTable::new(&[1, 2, 3, 0, 4]);
        let mut counts = [0u32; 5];
        for k in 0..100_000u64 {
            counts[table.sample(splitmix64(k))] += 1;
        }
        assert_eq!(counts[3], 0, "weight 0 drawn");
        for (i, w) in [(0, 1.0), (1, 2.0), (2, 3.0), (4, 4.0)] {
            let share = f64::from(counts[i]) / 100_000.0;
            assert!((share - w / 10.0).abs() < 0.01, "backend {i}: {share}");
        }
    }

    #[test]
    fn thread_draws_are_spread_and_chances_hold() {
        let mut counts = [0u32; 3];
        let mut hits = 0;
        for _ in 0..30_000 {
            counts[below(thread_random(), 3)] += 1;
            hits += u32::from(chance(thread_random(), 0.25));
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert!((7_000..8_000).contains(&hits), "{hits}");
    }
}
