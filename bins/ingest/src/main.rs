//! rig-ingest: the HTTP API and the only writer of the event log (see `lib.rs`).

rig_ops::service_allocator!();

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-ingest", rig_ingest::run)
}
