//! rig-cost-projector: keeps `daily_cost` from the event log (see `lib.rs`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let metrics = shared::telemetry::init("rig-cost-projector");
    let settings = match shared::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rig-cost-projector: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rig_cost_projector::run(settings, metrics, shared::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rig-cost-projector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
