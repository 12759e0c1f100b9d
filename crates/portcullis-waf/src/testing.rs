//! Helpers of the crate's tests.

/// A xorshift generator from `seed` (not zero): reproducible pseudo-random test input.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
