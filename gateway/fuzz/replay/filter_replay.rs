//! Runs the `filter` fuzz target's saved inputs (corpus and grown folders) through the same case
//! again and again, without libFuzzer or a sanitizer, and prints after each pass the live heap
//! bytes (counted by this binary's allocator) and the resident memory. A leak grows the live
//! bytes by about the same amount every pass; a fuzzing run's growth that does not show here
//! is libFuzzer's (its corpus, its coverage tables) or the sanitizer's (quarantine, shadow).
//!
//!     cd gateway/fuzz && cargo +nightly run --release --bin filter_replay -- 20 corpus/filter grown/filter

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

#[path = "../fuzz_targets/filter_case.rs"]
mod filter_case;

/// The system allocator, counting the bytes it has handed out and not had back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let passes: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(10);
    let mut inputs = Vec::new();
    for dir in args {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("filter_replay: cannot read {dir}");
            std::process::exit(2);
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                inputs.push(data);
            }
        }
    }
    println!("{} inputs, {passes} passes", inputs.len());
    println!("pass  seconds  live heap (KiB)  change  RSS (KiB)");
    let mut before = LIVE.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    for pass in 1..=passes {
        for data in &inputs {
            filter_case::run(data);
        }
        let live = LIVE.load(Ordering::Relaxed);
        println!(
            "{pass:>4} {:>8.1} {:>16} {:>+7} {:>10}",
            started.elapsed().as_secs_f64(),
            live / 1024,
            (live - before) / 1024,
            rss_kib()
        );
        before = live;
    }
}
