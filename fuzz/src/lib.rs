//! Helpers shared by Bearing's fuzz targets (`fuzz_targets/*.rs`).

use std::sync::OnceLock;

/// Whether the property tagged `tag` is switched off by the environment variable
/// `BEARING_FUZZ_SKIP` (comma-separated tags). Only for properties whose fix is pending on
/// another branch: a run on a tree without the fix then explores past the known defect
/// instead of stopping at it. The tags are listed in `benches/README.md` ("Fuzzing").
pub fn skipped(tag: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("BEARING_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    })
    .iter()
    .any(|t| t == tag)
}

/// Read sizes chosen by `seed`: a deterministic sequence of splits of a stream, small ones
/// (1..=16 bytes) most of the time and now and then a large one, so framing is fed across
/// every kind of boundary a socket read can produce.
pub struct Splits(u32);

impl Splits {
    /// The sequence for `seed` (any value).
    pub fn new(seed: u8) -> Splits {
        Splits(u32::from(seed).wrapping_mul(0x9e37_79b9) | 1)
    }

    /// The next read size (at least 1).
    pub fn next_len(&mut self) -> usize {
        // xorshift32
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        if self.0.is_multiple_of(8) {
            4096
        } else {
            (self.0 % 16) as usize + 1
        }
    }
}

/// The fields of a written head (after [`bearing_http1::written_head`]) whose name is `name`
/// (case-insensitive).
pub fn fields_named<'a>(head: &'a [u8], name: &'a str) -> Vec<&'a [u8]> {
    bearing_http1::written_head(head)
        .map(|(_, fields)| {
            fields
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}
