//! Batches: which examples go together in an epoch ([`epoch_batches`]) and how they are padded
//! into one `[batch, seq]` block ([`collate`]).
//!
//! An epoch is a permutation of the examples drawn from `(seed, epoch)` with [`SplitMix64`], so a
//! run is reproducible and a resumed run sees the same order. To keep padding small, the shuffled
//! order is cut into windows of `batch_size * 64` examples, each window is sorted by length and cut
//! into batches, and then the order of all batches is shuffled again: a batch holds examples of
//! similar length, yet which examples meet and in what order batches come still varies per epoch.
//!
//! Padding is on the right with `pad_id`, and padded positions get [`IGNORE_INDEX`] labels. With
//! a causal mask no real token attends to the padding after it, so no attention mask is needed.

use crate::eval::Example;
use crate::model::IGNORE_INDEX;

/// How many batches' worth of examples one length-sorting window holds.
const WINDOW_BATCHES: usize = 64;

/// SplitMix64 (Steele, Lea & Flood 2014; the seeder of xoshiro): a tiny deterministic PRNG, so
/// the data order depends on nothing but the seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 for `n < 2^32`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// The batches of one epoch as indices into `lengths` (one length per example): every index once,
/// batches of `batch_size` (the last may be smaller; 0 counts as 1) holding examples of similar
/// length, in an order drawn from `(seed, epoch)`. Same inputs, same output.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    // One stream per (seed, epoch): the epoch goes through the mixer too, so neighbouring epochs
    // of neighbouring seeds don't share streams.
    let mut rng = SplitMix64::new(SplitMix64::new(seed).next_u64() ^ epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for window in order.chunks_mut(batch_size * WINDOW_BATCHES) {
        // Stable: equal lengths keep their shuffled order.
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// Examples padded into one row-major `[batch, seq]` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, `[batch, seq]` row-major, right-padded with the pad id.
    pub input_ids: Vec<i64>,
    /// Labels, `[batch, seq]` row-major, [`IGNORE_INDEX`] on padding and masked positions.
    pub labels: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns: the longest example's length.
    pub seq: usize,
    /// Labels the shifted loss counts: unmasked labels at positions `>= 1` of each row (the
    /// denominator of the mean loss, or the weight of this batch when accumulating).
    pub targets: usize,
}

/// Pads `examples` on the right to the longest one: ids with `pad_id`, labels with
/// [`IGNORE_INDEX`].
///
/// # Shapes
/// `n` examples of lengths `l_i` -> `input_ids`, `labels`: `[n, max_i l_i]` row-major.
pub fn collate(examples: &[&Example], pad_id: i64) -> Batch {
    let batch = examples.len();
    let seq = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut input_ids = Vec::with_capacity(batch * seq);
    let mut labels = Vec::with_capacity(batch * seq);
    for ex in examples {
        let pad = seq - ex.input_ids.len();
        input_ids.extend_from_slice(&ex.input_ids);
        input_ids.extend(std::iter::repeat_n(pad_id, pad));
        // invariant: an Example's labels are as long as its ids (the loaders check it); pad to
        // `seq` from wherever they end so a malformed one can't shift the next row.
        labels.extend(ex.labels.iter().take(seq));
        labels.extend(std::iter::repeat_n(
            IGNORE_INDEX,
            seq - ex.labels.len().min(seq),
        ));
    }
    Batch {
        input_ids,
        labels,
        batch,
        seq,
        targets: examples.iter().map(|e| e.target_count()).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[i64], labels: &[i64]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn splitmix64_reference_values() {
        // Seed 1234567: the first outputs Rosetta Code's SplitMix64 task lists (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn below_and_shuffle() {
        let mut rng = SplitMix64::new(7);
        assert!((0..1000).all(|_| rng.below(3) < 3));
        let mut v: Vec<u32> = (0..100).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    fn lengths(n: usize) -> Vec<usize> {
        let mut rng = SplitMix64::new(99);
        (0..n).map(|_| 1 + rng.below(500)).collect()
    }

    #[test]
    fn every_index_once_and_deterministic() {
        let lens = lengths(1000);
        for bs in [1, 3, 8, 64] {
            let batches = epoch_batches(&lens, bs, 42, 0);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>(), "bs {bs}");
            assert_eq!(batches.len(), 1000usize.div_ceil(bs));
            assert_eq!(
                batches.iter().filter(|b| b.len() != bs).count(),
                usize::from(1000 % bs != 0)
            );
            assert_eq!(batches, epoch_batches(&lens, bs, 42, 0));
        }
        assert_ne!(
            epoch_batches(&lens, 8, 42, 0),
            epoch_batches(&lens, 8, 42, 1)
        );
        assert_ne!(
            epoch_batches(&lens, 8, 42, 0),
            epoch_batches(&lens, 8, 43, 0)
        );
        assert!(epoch_batches(&[], 8, 1, 0).is_empty());
        assert_eq!(epoch_batches(&[5, 6], 0, 1, 0).len(), 2);
    }

    #[test]
    fn length_grouping_cuts_padding() {
        let lens = lengths(4096);
        let bs = 8;
        let padding = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    let max = b.iter().map(|&i| lens[i]).max().unwrap_or(0);
                    b.iter().map(|&i| max - lens[i]).sum::<usize>()
                })
                .sum()
        };
        let grouped = padding(&epoch_batches(&lens, bs, 3, 0));
        // Plain shuffled batches for comparison.
        let mut order: Vec<usize> = (0..lens.len()).collect();
        SplitMix64::new(3).shuffle(&mut order);
        let plain: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        let plain = padding(&plain);
        // Uniform lengths in 1..=500: ~220 padding per row shuffled, a few per row grouped.
        assert!(grouped * 20 < plain, "grouped {grouped}, shuffled {plain}");
    }

    #[test]
    fn collate_pads_right_and_counts_shifted_targets() {
        let a = ex(&[1, 2, 3], &[-100, 2, 3]);
        let b = ex(&[4, 5], &[4, 5]);
        let c = ex(&[6], &[6]);
        let batch = collate(&[&a, &b, &c], 0);
        assert_eq!((batch.batch, batch.seq), (3, 3));
        assert_eq!(batch.input_ids, [1, 2, 3, 4, 5, 0, 6, 0, 0]);
        assert_eq!(batch.labels, [-100, 2, 3, 4, 5, -100, 6, -100, -100]);
        // Row a: 2 and 3; row b: 5 (4 sits at position 0 and is never predicted); row c: none.
        assert_eq!(batch.targets, 3);
        let empty = collate(&[], 0);
        assert_eq!((empty.batch, empty.seq, empty.targets), (0, 0, 0));
    }
}
