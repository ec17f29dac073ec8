//! rig-notifier: posts chosen events to Discord (see `lib.rs`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let metrics = shared::telemetry::init("rig-notifier");
    let settings = match shared::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rig-notifier: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rig_notifier::run(settings, metrics, shared::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rig-notifier: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
