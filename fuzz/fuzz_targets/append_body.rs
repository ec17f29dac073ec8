//! `POST /v1/events` and `POST /api/events` bodies: bytes → `parse_json` → `parse_append` (and
//! through `compat::translate`). Never panics; an accepted append has 1..=1000 events with
//! distinct ids. The body is shared with the stable tests (`bins/ingest/tests/fuzz_stable.rs`).
#![no_main]

#[path = "../../bins/ingest/tests/fuzz_bodies/mod.rs"]
#[allow(dead_code)] // each target uses half of it
mod fuzz_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::append_body(data));
