//! rig-ingest: the HTTP API and the only writer of the event log.

// Every request allocates many small, short-lived objects (the parsed JSON body, the batch's
// arrays, the answer), often freed on another thread than the one that allocated them; glibc's
// malloc was a third of ingest's CPU under load (callgrind), mimalloc costs far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
