//! Parsing, planning and linting are linear in the input: for generated inputs of size n and 4n,
//! the bytes allocated (counted exactly) and the best-of-3 CPU time grow by well under 16x (what
//! quadratic work would give). Ratios between two sizes, never absolute times.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use manifold_dockerfile::{lint, parse, plan::validate, PlanOptions};
use oci::Platform;
use proptest::prelude::*;

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts requested bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: ptr came from System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn opts() -> PlanOptions {
    PlanOptions {
        target: None,
        platforms: vec![
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm64", ""),
        ],
        build_platform: Platform::new("linux", "amd64", ""),
        build_args: BTreeMap::new(),
        base_configs: BTreeMap::new(),
        contexts: BTreeMap::new(),
    }
}

/// The whole `--check` path: parse, validate (plan without steps), lint.
fn check(src: &str) {
    let df = parse(src, "Dockerfile").expect("generated input parses");
    validate(&df, &opts()).expect("generated input plans");
    let _ = lint(&df);
}

/// CPU seconds this thread has run (Linux schedstat): other processes on a busy machine do not
/// count, unlike wall time.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: f64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat field");
    ns / 1e9
}

/// (bytes allocated, best-of-3 CPU seconds) for one run over `src`.
fn cost(src: &str) -> (f64, f64) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    check(src);
    let bytes = (ALLOCATED.load(Ordering::Relaxed) - before) as f64;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = cpu_seconds();
        check(src);
        best = best.min(cpu_seconds() - t);
    }
    (bytes, best)
}

/// Measurements run one at a time: the test harness runs tests on parallel threads.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn assert_linear(what: &str, gen: &dyn Fn(usize) -> String, n: usize) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (small, large) = (gen(n), gen(4 * n));
    let (b1, t1) = cost(&small);
    let (b4, t4) = cost(&large);
    let (rb, rt) = (b4 / b1.max(1.0), t4 / t1.max(1e-6));
    // Linear work gives about 4; quadratic 16.
    assert!(
        rb < 8.0,
        "{what}: 4x input allocated {rb:.1}x the bytes ({b1} -> {b4})"
    );
    assert!(
        rt < 10.0,
        "{what}: 4x input took {rt:.1}x the time ({t1:.4}s -> {t4:.4}s)"
    );
}

fn env_pairs(n: usize, word: &str) -> String {
    let mut s = String::from("FROM alpine\nENV");
    for i in 0..n {
        s.push_str(&format!(" K{i}={word}$K{}", i.saturating_sub(1)));
    }
    s.push_str("\nRUN true\n");
    s
}

fn global_args(n: usize, word: &str) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("ARG A{i}={word}\n"));
    }
    s.push_str("FROM alpine\nARG A0\nRUN true\n");
    s
}

fn stage_chain(n: usize, word: &str) -> String {
    let mut s = String::from("FROM alpine AS s0\n");
    for i in 1..n {
        s.push_str(&format!("FROM s{} AS s{i}\nRUN echo {word}\n", i - 1));
    }
    s
}

fn run_lines(n: usize, word: &str) -> String {
    let mut s = String::from("FROM alpine\nENV A=1 B=2 C=3\n");
    for i in 0..n {
        s.push_str(&format!("RUN echo {word} {i} && \\\n  true\n"));
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1, ..ProptestConfig::default() })]

    #[test]
    fn env_pairs_are_linear(word in "[a-z]{1,12}") {
        assert_linear("ENV pairs", &|n| env_pairs(n, &word), 4_000);
    }

    #[test]
    fn global_args_are_linear(word in "[a-z]{1,12}") {
        assert_linear("global ARGs", &|n| global_args(n, &word), 2_000);
    }

    #[test]
    fn stage_chains_are_linear(word in "[a-z]{1,12}") {
        assert_linear("stage chain", &|n| stage_chain(n, &word), 1_500);
    }

    #[test]
    fn run_lines_are_linear(word in "[a-zé ]{1,40}") {
        assert_linear("RUN lines", &|n| run_lines(n, &word), 3_000);
    }

    #[test]
    fn random_bytes_are_linear(seed in any::<u64>()) {
        // RUN lines of random bytes (quotes, escapes, `$`, `#`, invalid UTF-8): they parse, so
        // the whole input is read at both sizes.
        let gen = |n: usize| {
            let mut x = seed | 1;
            let mut v = b"FROM a\n".to_vec();
            while v.len() < n {
                v.extend_from_slice(b"RUN x");
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = b"ab \\$#=\"'\t{}:\xff\xc3\xa9\n"[(x % 17) as usize];
                    v.push(b);
                    if b == b'\n' {
                        break;
                    }
                }
            }
            v
        };
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let t = |b: &[u8]| {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = cpu_seconds();
                let r = manifold_dockerfile::parse_bytes(b.to_vec(), "D");
                best = best.min(cpu_seconds() - t);
                assert!(r.is_ok(), "{:?}", r.err());
            }
            best
        };
        let (t1, t4) = (t(&gen(100_000)), t(&gen(400_000)));
        prop_assert!(t4 / t1.max(1e-6) < 9.0, "random bytes: {t1} -> {t4}");
    }
}
