//! The hostile phase: honest appends with and without clients sending bodies that must be
//! refused.

use super::*;
use serde_json::json;
use std::net::SocketAddr;

/// The bodies hostile clients send, each with the status it must be refused with: what an
/// outside review saw do damage (a NUL, a multi-KB id, a huge title, a `cost_usd` whose sums no
/// longer decode, a repeated key). Each has a stream of its own, so nothing honest is touched
/// even if one were taken.
pub(super) fn hostile_bodies() -> Vec<(Vec<u8>, u16)> {
    let usage = |stream: &str, data: &str| append_body_with(stream, 1, data).into_bytes();
    vec![
        (
            usage(
                "bench/hostile#1",
                r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1,"note":"a\u0000b"}"#,
            ),
            422,
        ),
        (
            format!(
                r#"{{"stream_id":"bench/hostile#2","events":[{{"type":"ISSUE_ASSIGNED","data":{{"agent_id":"{}"}}}}]}}"#,
                "x".repeat(5000)
            )
            .into_bytes(),
            422,
        ),
        (
            format!(
                r#"{{"stream_id":"bench/hostile#3","events":[{{"type":"ISSUE_APPROVED","data":{{"title":"{}"}}}}]}}"#,
                "t".repeat(100_000)
            )
            .into_bytes(),
            422,
        ),
        (
            usage(
                "bench/hostile#4",
                r#"{"agent_id":"bench-agent","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1,"cost_usd":1e28}"#,
            ),
            422,
        ),
        (
            usage(
                "bench/hostile#5",
                r#"{"agent_id":"bench-agent","agent_id":"other","model":"claude-sonnet-4-5","input_tokens":1,"output_tokens":1}"#,
            ),
            400,
        ),
    ]
}

/// Honest single-event appends by 64 clients, alone and then alongside 4 hostile clients (each
/// cycling through `hostile_bodies`), back to back so both see the same machine: the rate with
/// them must stay at least 0.6 of the rate without. Returns the rate without as the baseline and
/// the rate with as the figure.
pub(super) async fn hostile_phase(
    ingest_addr: SocketAddr,
    sizes: &Sizes,
    probe: IngestProbe<'_>,
    steps: [&str; 2],
) -> anyhow::Result<(Baseline, Figure)> {
    progress(&format!(
        "{} honest single-event appends, 64 clients, no hostile ones, {} s …",
        steps[0], sizes.seconds
    ));
    let alone = http_appends_among(ingest_addr, 64, 1, "honest", Body::Valid, 0, sizes, probe).await?;
    progress(&format!("      {:.0} events/s", alone.rate));
    progress(&format!(
        "{} the same 64 honest clients with 4 hostile ones (NUL, oversize, huge cost_usd, repeated keys), {} s …",
        steps[1], sizes.seconds
    ));
    let with = http_appends_among(ingest_addr, 64, 1, "honest", Body::Valid, 4, sizes, probe).await?;
    progress(&format!(
        "      {:.0} events/s ({:.0} hostile requests/s refused)",
        with.rate, with.detail["hostile"]["refused_per_s"]
    ));
    let baseline = Baseline {
        name: "append_single_http_64_without_hostile",
        value: alone.rate,
        unit: "events/s",
        detail: {
            let mut d = alone.detail;
            d["what"] = json!(
                "the 64 honest clients of the hostile phase alone, measured right before them with 4 hostile clients"
            );
            d
        },
    };
    let figure = Figure::of("append_single_http_64_with_4_hostile", with.rate, "events/s", &baseline)
        .at_least(">= 0.6x the same clients without hostile ones", Some(0.6), None)
        .detail(with.detail);
    Ok((baseline, figure))
}
