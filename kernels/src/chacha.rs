//! ChaCha12 as a counter-based generator: the 32-bit word at any position
//! of the stream `rand`'s `StdRng` (ChaCha12, stream 0) draws from a seed,
//! computed from the position alone. The interpreter draws dropout's
//! uniform numbers from that stream one after another; a GPU thread computes
//! the words of its own elements, so every backend draws the same numbers.
//! The PTX backend emits these operations one for one.

const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The state's four quarter-round index sets, columns then diagonals.
pub const COLUMNS: [[usize; 4]; 4] = [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]];
pub const DIAGONALS: [[usize; 4]; 4] = [[0, 5, 10, 15], [1, 6, 11, 12], [2, 7, 8, 13], [3, 4, 9, 14]];
/// Double rounds: ChaCha12 is 12 rounds.
pub const DOUBLE_ROUNDS: usize = 6;

/// The key `StdRng::seed_from_u64(seed)` (ChaCha12) uses: `rand_core`'s
/// expansion of a u64 into 32 bytes (a PCG32 stream), as its `seed_from_u64`.
pub fn key_of_seed(seed: u64) -> [u32; 8] {
    const MUL: u64 = 6_364_136_223_846_793_005;
    const INC: u64 = 11_634_580_027_462_260_723;
    let mut state = seed;
    std::array::from_fn(|_| {
        state = state.wrapping_mul(MUL).wrapping_add(INC);
        let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
        xorshifted.rotate_right((state >> 59) as u32)
    })
}

/// The initial state of the block holding word `position`.
pub fn initial_state(key: &[u32; 8], position: u64) -> [u32; 16] {
    let block = position / 16;
    let mut s = [0u32; 16];
    s[..4].copy_from_slice(&CONSTANTS);
    s[4..12].copy_from_slice(key);
    s[12] = block as u32;
    s[13] = (block >> 32) as u32;
    s
}

pub fn quarter_round(s: &mut [u32; 16], [a, b, c, d]: [usize; 4]) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

/// The stream's word at `position` (words count from 0 at the seed).
pub fn word(key: &[u32; 8], position: u64) -> u32 {
    let init = initial_state(key, position);
    let mut s = init;
    for _ in 0..DOUBLE_ROUNDS {
        for q in COLUMNS {
            quarter_round(&mut s, q);
        }
        for q in DIAGONALS {
            quarter_round(&mut s, q);
        }
    }
    let i = (position % 16) as usize;
    s[i].wrapping_add(init[i])
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha12Rng;

    use super::*;

    /// The same words `rand`'s generator draws, at every offset of a few
    /// blocks and far into the stream.
    #[test]
    fn words_equal_the_stream_of_rands_generator() {
        for seed in [0u64, 7, 1 << 40] {
            let rng = ChaCha12Rng::seed_from_u64(seed);
            let key: [u32; 8] = std::array::from_fn(|i| u32::from_le_bytes(rng.get_seed()[4 * i..4 * i + 4].try_into().unwrap()));
            assert_eq!(key_of_seed(seed), key, "seed {seed}");
            for start in [0u64, 5, 63, 64, 1_000_003] {
                let mut r = rng.clone();
                r.set_word_pos(start as u128);
                for p in start..start + 40 {
                    assert_eq!(word(&key, p), r.next_u32(), "seed {seed} position {p}");
                }
            }
        }
    }
}
