//! A rate limit's memory is bounded whatever the number of keys: counting every
//! allocation, a limiter that sees 300,000 keys it never saw before allocates
//! nothing after it was made (its table is sized once, at load).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tollgate::config::{RateKey, RateLimitConfig};
use tollgate::filters::rate_limit::RateLimiter;

/// The system allocator, counting allocations while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout is passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn new_keys_allocate_nothing() {
    let config = RateLimitConfig {
        key: RateKey::ClientIp,
        rate: tollgate::config::units::parse_rate("1/m").unwrap(),
        burst: 0,
        status: http::StatusCode::TOO_MANY_REQUESTS,
        scope: Default::default(),
        on_store_error: Default::default(),
    };
    let limiter = RateLimiter::new(&config);
    // Warm up: the clock and anything lazily made on first use.
    limiter.check(b"warm-up");
    let keys: Vec<[u8; 4]> = (0..300_000u32).map(u32::to_be_bytes).collect();
    COUNTING.store(true, Ordering::Relaxed);
    for key in &keys {
        std::hint::black_box(limiter.check(key));
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "the limiter allocated for new keys"
    );
    // And it still limits: a key just seen is refused.
    assert!(matches!(
        limiter.check(&keys[299_999]),
        tollgate::filters::rate_limit::Decision::Deny { .. }
    ));
}
