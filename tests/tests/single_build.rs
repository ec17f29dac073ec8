//! A newcomer's first `cargo run --release -p rigctl -- up --demo` compiles the dependency tree
//! once: `rigctl up` builds the workers together with rigctl (`build_with_rigctl`), and that
//! build reuses every dependency compiled for rigctl only if rigctl alone resolves each one with
//! the same features as rigctl and the workers together.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;

const WORKERS: [&str; 5] = [
    "rig-ingest",
    "rig-token-projector",
    "rig-cost-projector",
    "rig-stale-heartbeat",
    "rig-notifier",
];

/// Every (package, enabled features) cargo resolves when building `packages` together.
fn resolution(packages: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "tree",
        "--offline",
        "-e",
        "normal,build",
        "-f",
        "{p} {f}",
        "--prefix",
        "none",
        "--no-dedupe",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_workers_build_with_the_features_rigctl_alone_resolves() {
    let alone = resolution(&["rigctl"]);
    let mut together = vec!["rigctl"];
    together.extend(WORKERS);
    let with_workers = resolution(&together);
    // What the joint build adds may only be the workers' own crates: any other line is a
    // dependency that would compile a second time with another feature set.
    let extra: Vec<&String> = with_workers
        .difference(&alone)
        .filter(|l| !WORKERS.iter().any(|w| l.starts_with(&format!("{w} v"))))
        .collect();
    assert!(
        extra.is_empty(),
        "building the workers with rigctl resolves these differently from rigctl alone \
         (give rigctl the same dependency features, see bins/rigctl/Cargo.toml): {extra:#?}"
    );
    let missing: Vec<&String> = alone.difference(&with_workers).collect();
    assert!(missing.is_empty(), "{missing:#?}");
}
