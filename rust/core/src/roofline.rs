//! The memory-read roofline: how fast this machine can merely read bytes.
//!
//! Benchmarks divide a kernel's input bytes per second by this figure; a
//! streaming kernel cannot beat it, and a good one comes close.

use rayon::prelude::*;

/// Reads every byte of `data` on all threads and returns a checksum (so the
/// reads cannot be optimised away).
pub fn read_all(data: &[u8]) -> u64 {
    crate::threads::init_pool();
    const CHUNK: usize = 1 << 20;
    data.par_chunks(CHUNK)
        .map(|chunk| {
            let (head, words, tail) = {
                // SAFETY: every bit pattern is a valid u64; align_to only
                // re-slices the aligned middle of the byte slice.
                unsafe { chunk.align_to::<u64>() }
            };
            // Eight independent accumulators keep the loads in flight.
            let mut acc = [0u64; 8];
            let mut blocks = words.chunks_exact(8);
            for block in &mut blocks {
                for i in 0..8 {
                    acc[i] = acc[i].wrapping_add(block[i]);
                }
            }
            let mut sum = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            for &w in blocks.remainder() {
                sum = sum.wrapping_add(w);
            }
            for &b in head.iter().chain(tail) {
                sum = sum.wrapping_add(b as u64);
            }
            sum
        })
        .reduce(|| 0, u64::wrapping_add)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeros_sum_to_zero_and_ones_do_not() {
        assert_eq!(super::read_all(&vec![0u8; 3 << 20]), 0);
        assert_ne!(super::read_all(&vec![1u8; (3 << 20) + 5]), 0);
    }
}
