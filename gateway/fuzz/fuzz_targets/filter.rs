//! The CEL filter and projection path: `Shape::new` compiles a fuzzed filter (and `fields`),
//! then `Shape::render` evaluates it against a fuzzed record, as the hub does for every record
//! (the case itself is in `filter_case.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod filter_case;

fuzz_target!(|data: &[u8]| filter_case::run(data));
