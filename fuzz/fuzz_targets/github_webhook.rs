//! GitHub webhook deliveries, as `<X-GitHub-Event>\n<X-Hub-Signature-256>\n<body>`:
//! `verify_signature`, `parse_json`, `plan`, `links`, `closing_refs` and `branch_issue`. Never
//! panics. The body is shared with the stable tests (`bins/ingest/tests/fuzz_stable.rs`).
#![no_main]

#[path = "../../bins/ingest/tests/fuzz_bodies/mod.rs"]
#[allow(dead_code)] // each target uses half of it
mod fuzz_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::github_webhook(data));
