//! Key and value shapes: fixed-size keys over a key space, as etcd's
//! benchmark makes them.

/// A small, fast, deterministic generator (xorshift64*), seeded per client, so
/// runs are repeatable and no client shares state with another.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// The key for number `n`: its decimal digits, left-padded with zeros (or cut
/// from the left) to exactly `size` bytes, under `prefix`.
pub fn key(prefix: &[u8], n: u64, size: usize) -> Vec<u8> {
    let digits = format!("{n:0size$}");
    let digits = &digits.as_bytes()[digits.len() - size.min(digits.len())..];
    let mut out = Vec::with_capacity(prefix.len() + size);
    out.extend_from_slice(prefix);
    out.extend_from_slice(digits);
    out
}

/// A value of `size` bytes.
pub fn value(size: usize) -> Vec<u8> {
    vec![b'v'; size]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size() {
        assert_eq!(key(b"", 7, 8), b"00000007");
        assert_eq!(key(b"p/", 123456789, 4), b"p/6789");
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| rng.below(10) < 10));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
