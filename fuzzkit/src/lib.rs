//! Fuzzing of our decoders on the stable toolchain, with proptest.
//!
//! Every decoder that reads what a peer, a client, an operator or the disk
//! hands us has a fuzz target: a test named `fuzz_<what>` that feeds it
//! random bytes and mutations of valid encodings (bit flips, truncations,
//! insertions, length fields changed) and asserts that it never panics,
//! that it answers with a clean error, and, where a round trip is defined,
//! that what it accepts encodes back to the same value.
//!
//! How many cases a target runs comes from `FUZZ_CASES` (default
//! [`DEFAULT_CASES`], so a plain `cargo test` stays short);
//! `ops/scripts/fuzz.sh` runs every target with 1,000,000 in an optimised
//! build. A failing case is shrunk and its seed saved in the crate's
//! `proptest-regressions/` (commit that file: every later run replays it
//! first); the shrunk input also becomes an explicit `#[test]` next to the
//! target, which keeps it even if a generator changes.
//!
//! Layout:
//! - [`run`]: runs one target and prints its case count and time.
//! - [`Mutation`], [`mutations`], [`mutate`]: what is done to a valid encoding.
//! - [`bytes`], [`TOKENS`]: random input, and text that breaks parsers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per target when `FUZZ_CASES` is not set: every target together
/// stays within seconds on a debug build.
pub const DEFAULT_CASES: u32 = 1000;

/// The number of cases each target runs: `FUZZ_CASES` (`1000000` or
/// `1_000_000`), else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    match std::env::var("FUZZ_CASES") {
        Ok(raw) => raw
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_CASES={raw:?} is not a number of cases (at most {})", u32::MAX)),
        Err(_) => DEFAULT_CASES,
    }
}

/// Runs the target `name` (defined in `source_file`, whose regressions file
/// proptest keeps) over [`cases`] inputs, then prints one line
/// `fuzz-result <name> cases=<inputs run> seconds=<s>` for
/// `ops/scripts/fuzz.sh` (the inputs counted as they run: saved failures
/// replayed first and shrinking steps included). A failure panics with the
/// shrunk input.
pub fn run<S: Strategy>(
    name: &str,
    source_file: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = cases();
    let mut config = Config::with_cases(cases);
    config.source_file = Some(source_file);
    let mut runner = TestRunner::new(config);
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(input)
    });
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("fuzz-result {name} cases={} seconds={seconds:.1}", ran.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("fuzz target {name}: {e}\n{runner}");
    }
}

/// Text that tends to break parsers of JSON, TOML, URLs and our own
/// fields, inserted by [`Mutation::InsertToken`].
pub const TOKENS: &[&str] = &[
    "\"",
    "'",
    "\\",
    "{",
    "}",
    "[",
    "]",
    "[[",
    "]]",
    ",",
    ":",
    "=",
    ".",
    "#",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\0",
    "null",
    "true",
    "-",
    "-1",
    "0",
    "1e999",
    "-0",
    "1.5",
    "NaN",
    "inf",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "\u{feff}",
    "\u{fffd}",
    "é",
    "\u{10ffff}",
    "%",
    "%00",
    "%ff",
    "%2F",
    "%25",
    "/",
    "..",
    "?",
    "&",
    "+",
    "~",
    "0x",
    "1979-05-27T07:32:00Z",
    "9999-12-31T23:59:60Z",
    "=443",
    "::",
    "[::1]:0",
    "255.255.255.255:65535",
    "a=",
    "=b",
];

/// One change to a valid encoding. Positions are [`Index`]es, scaled to the
/// length of the bytes at the moment the change applies.
#[derive(Clone, Debug)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Remove(Index, usize),
    Insert(Index, Vec<u8>),
    InsertToken(Index, &'static str),
    /// Overwrites `width` bytes (1, 2, 4 or 8) with a little-endian value:
    /// a length or count field set to something else.
    SetWord(Index, u8, u64),
    /// Inserts a protobuf varint (a tag, or a length that lies).
    Varint(Index, u64),
    /// Copies up to `len` bytes from one place to another.
    Splice(Index, Index, usize),
}

/// Values a length or count field is set to.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x100,
            0x7fff,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 32,
            i64::MAX as u64,
            u64::MAX,
        ]),
        0u64..64,
        any::<u64>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => (any::<Index>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Mutation::InsertToken(at, t)),
        2 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), word())
            .prop_map(|(at, width, value)| Mutation::SetWord(at, width, value)),
        1 => (any::<Index>(), word()).prop_map(|(at, value)| Mutation::Varint(at, value)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64).prop_map(|(from, to, n)| Mutation::Splice(from, to, n)),
    ]
}

/// No change one time in six (the valid encoding itself), one change half
/// the time (a valid encoding with one flaw gets furthest into a decoder),
/// else 2-5 changes.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![1 => Just(Vec::new()), 3 => vec(mutation(), 1..2), 2 => vec(mutation(), 2..6)]
}

/// `valid` with `mutations` applied in order.
pub fn mutate(valid: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for m in mutations {
        m.apply(&mut bytes);
    }
    bytes
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        // A byte that exists, or a place to insert at (0..=len).
        let byte_at = |i: &Index, len: usize| (len > 0).then(|| i.index(len));
        let gap_at = |i: &Index, len: usize| i.index(len + 1);
        match self {
            Mutation::FlipBit(at, bit) => {
                if let Some(at) = byte_at(at, b.len()) {
                    b[at] ^= 1 << (bit % 8);
                }
            }
            Mutation::SetByte(at, byte) => {
                if let Some(at) = byte_at(at, b.len()) {
                    b[at] = *byte;
                }
            }
            Mutation::Truncate(at) => b.truncate(gap_at(at, b.len())),
            Mutation::Remove(at, n) => {
                if let Some(at) = byte_at(at, b.len()) {
                    let end = (at + n).min(b.len());
                    b.drain(at..end);
                }
            }
            Mutation::Insert(at, bytes) => {
                let at = gap_at(at, b.len());
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::InsertToken(at, token) => {
                let at = gap_at(at, b.len());
                b.splice(at..at, token.bytes());
            }
            Mutation::SetWord(at, width, value) => {
                if let Some(at) = byte_at(at, b.len()) {
                    let end = (at + usize::from(*width)).min(b.len());
                    b[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                }
            }
            Mutation::Varint(at, value) => {
                let at = gap_at(at, b.len());
                b.splice(at..at, varint(*value));
            }
            Mutation::Splice(from, to, n) => {
                if let Some(from) = byte_at(from, b.len()) {
                    let chunk = b[from..(from + n).min(b.len())].to_vec();
                    let to = gap_at(to, b.len());
                    b.splice(to..to, chunk);
                }
            }
        }
    }
}

/// `value` as a protobuf (LEB128) varint.
pub fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// Up to `max` random bytes.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_leb128() {
        assert_eq!(varint(0), [0]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    proptest! {
        #[test]
        fn mutations_apply_to_any_length(valid in bytes(8), mutations in vec(mutation(), 0..8)) {
            let _ = mutate(&valid, &mutations);
        }
    }
}
