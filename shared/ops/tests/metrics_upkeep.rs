//! The Prometheus recorder keeps every histogram sample until something drains it. This test
//! counts the bytes the process holds (its own global allocator) while nobody scrapes: a million
//! samples must be given back by the recorder's upkeep, not held until a scrape that may never
//! come. The recording goes on slowly meanwhile, as in a live process (the recorder frees
//! drained samples lazily, when recording threads pass by). Its own test binary, so no other test's allocations blur the count.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn histogram_samples_are_drained_when_nobody_scrapes() {
    let _handle = rig_ops::telemetry::metrics_handle();
    let h = metrics::histogram!("rig_upkeep_test_duration_seconds");
    h.record(1.0);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..1_000_000 {
        h.record(0.001);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert!(held > 4_000_000, "the samples are held until drained ({held} bytes)");
    let limit = rig_ops::telemetry::UPKEEP_INTERVAL * 3;
    let started = Instant::now();
    loop {
        let now = LIVE.load(Ordering::Relaxed) - before;
        if now < 1_000_000 {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "still {now} bytes held {:?} after recording, with nobody scraping",
            started.elapsed()
        );
        // A live process goes on recording (a request or two a millisecond): the recorder frees
        // drained samples lazily, when threads that record pass by.
        for _ in 0..20 {
            h.record(0.001);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
