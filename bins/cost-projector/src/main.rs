//! rig-cost-projector: keeps `daily_cost` from the event log (`rig_projections::cost`).

rig_ops::service_allocator!();

fn main() -> std::process::ExitCode {
    rig_ops::service::main("rig-cost-projector", rig_projections::cost::run)
}
