//! rig-stale-heartbeat: finds issues whose agent went quiet (see `lib.rs`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let metrics = shared::telemetry::init("rig-stale-heartbeat");
    let settings = match shared::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rig-stale-heartbeat: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rig_stale_heartbeat::run(settings, metrics, shared::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rig-stale-heartbeat: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
