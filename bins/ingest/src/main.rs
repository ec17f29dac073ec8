//! rig-ingest: the HTTP API and the only writer of the event log.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let metrics = shared::telemetry::init("rig-ingest");
    let settings = match shared::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rig-ingest: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rig_ingest::run(settings, metrics, shared::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rig-ingest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
