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
    // A dependency both builds compile must get the same features in both, or the joint build
    // compiles it (and all that depends on it) again. A crate only the workers use (maud, hmac)
    // compiles once, in the joint build.
    let package = |line: &String| line.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let alone_packages: BTreeSet<String> = alone.iter().map(package).collect();
    let differ: Vec<&String> = with_workers
        .difference(&alone)
        .filter(|l| alone_packages.contains(&package(l)))
        .collect();
    assert!(
        differ.is_empty(),
        "building the workers with rigctl resolves these differently from rigctl alone \
         (give rigctl the same dependency features, see bins/rigctl/Cargo.toml): {differ:#?}"
    );
    let missing: Vec<&String> = alone.difference(&with_workers).collect();
    assert!(missing.is_empty(), "{missing:#?}");
}
