//! rig-token-projector: keeps `token_usage` from the event log (`rig_projections::token`).

rig_ops::service_allocator!();

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-token-projector", rig_projections::token::run)
}
