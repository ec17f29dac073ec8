//! `rigctl tenants …` as an operator runs it: the real binary against a real control database.
//! Adding a tenant creates and migrates its own database (by default `rig_t_<slug>` on the
//! control database's server, or wherever `--database-url` says) and registers it; tokens are
//! printed once and stored as hashes; routes and settings are checked; bad input exits non-zero
//! with a message and changes nothing; `migrate` covers every tenant; `consumers` shows a row
//! per (consumer, tenant).
#![allow(clippy::unwrap_used)]

use rig_tests::{rigctl, DropDatabase, Run, TestDb};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

fn ok(r: &Run) -> &Run {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    r
}

fn refused<'a>(r: &'a Run, says: &str) -> &'a Run {
    assert_ne!(r.code, 0, "expected a refusal; stdout: {}", r.stdout);
    assert!(r.stderr.contains(says), "stderr should say {says:?}: {}", r.stderr);
    r
}

#[tokio::test]
async fn operators_add_list_route_configure_and_migrate_tenants() {
    let control = TestDb::new().await;
    let admin = rig_ops::pg::with_database(&control.url, "postgres").unwrap();
    let acme_db = format!("{}_acme", control.name);
    let _cleanup = DropDatabase {
        admin_url: admin.clone(),
        name: acme_db.clone(),
    };
    // On "another server" (here the same one, named by URL): only host and port are kept.
    let acme_url = rig_ops::pg::with_database(&control.url, &acme_db).unwrap();
    ok(&rigctl(&control, &["tenants", "add", "acme", "--database-url", &acme_url]).await);
    let acme = sqlx::PgPool::connect(&acme_url).await.unwrap();
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&acme)
        .await
        .unwrap();
    assert_eq!(migrated, rig_log::db::MIGRATOR.iter().count() as i64);
    let (name, server): (String, Option<String>) =
        sqlx::query_as("SELECT database_name, database_url FROM tenants WHERE slug = 'acme'")
            .fetch_one(&control.pool)
            .await
            .unwrap();
    assert_eq!(name, acme_db);
    let server = server.unwrap();
    assert!(!server.contains("postgres@") && !server.contains(&acme_db), "{server}");

    // The default place: rig_t_<slug> on the control database's server.
    let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup2 = DropDatabase {
        admin_url: admin.clone(),
        name: format!("rig_t_{slug}"),
    };
    ok(&rigctl(&control, &["tenants", "add", &slug]).await);
    let mut a = PgConnection::connect(&admin).await.unwrap();
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(format!("rig_t_{slug}"))
        .fetch_one(&mut a)
        .await
        .unwrap();
    assert!(exists);

    // Bad slugs, a taken slug, an unreachable server: refused, nothing registered.
    for bad in [
        "Acme",
        "a",
        "default",
        "admin",
        "api",
        "pgfoo",
        "kubeprod",
        "ac-me",
        "abcdefghijklmnopqrstu",
    ] {
        refused(&rigctl(&control, &["tenants", "add", bad]).await, "tenant");
    }
    refused(&rigctl(&control, &["tenants", "add", "acme"]).await, "exists already");
    refused(
        &rigctl(
            &control,
            &[
                "tenants",
                "add",
                "nowhere",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/x",
            ],
        )
        .await,
        "nowhere",
    );
    assert_eq!(control.count("SELECT count(*) FROM tenants").await, 2);

    // Tokens: printed once, stored as their SHA-256 only.
    let t1 = ok(&rigctl(&control, &["tenants", "token", "acme"]).await)
        .stdout
        .trim()
        .to_owned();
    let t2 = ok(&rigctl(&control, &["tenants", "token", "acme"]).await)
        .stdout
        .trim()
        .to_owned();
    assert_ne!(t1, t2);
    assert!(t1.len() > 40);
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_sha256 FROM tenant_tokens WHERE tenant = 'acme'")
        .fetch_all(&control.pool)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 2);
    assert!(hashes.contains(&rig_tenants::token_hash(&t1)));
    assert_eq!(
        rig_tenants::tenant_of_token(&control.pool, &t2)
            .await
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    refused(&rigctl(&control, &["tenants", "token", "nope"]).await, "no tenant");

    // Routes, matched repository first, then installation, then owner; else default.
    ok(&rigctl(&control, &["tenants", "route", "acme", "--repo", "Acme/Widgets"]).await);
    ok(&rigctl(&control, &["tenants", "route", "acme", "--owner", "acme-corp"]).await);
    ok(&rigctl(&control, &["tenants", "route", &slug, "--installation", "4242"]).await);
    refused(
        &rigctl(&control, &["tenants", "route", "acme", "--repo", "no-slash"]).await,
        "not a repo",
    );
    refused(
        &rigctl(&control, &["tenants", "route", "acme", "--installation", "12ab"]).await,
        "not a installation",
    );
    let route = |repo: &'static str, inst: Option<i64>, owner: &'static str| {
        let pool = control.pool.clone();
        async move { rig_tenants::route(&pool, Some(repo), inst, Some(owner)).await.unwrap() }
    };
    assert_eq!(route("acme/widgets", Some(4242), "x").await, "acme");
    assert_eq!(route("other/repo", Some(4242), "acme-corp").await, slug);
    assert_eq!(route("other/repo", None, "ACME-CORP").await, "acme");
    assert_eq!(route("other/repo", None, "someone").await, "default");

    // Settings: checked, secrets never printed back.
    ok(&rigctl(
        &control,
        &["tenants", "set", "acme", "stale_heartbeat.threshold", "45m"],
    )
    .await);
    ok(&rigctl(
        &control,
        &["tenants", "set", "acme", "github.webhook_secret", "s3cret-value"],
    )
    .await);
    refused(
        &rigctl(
            &control,
            &["tenants", "set", "acme", "stale_heartbeat.threshold", "soon"],
        )
        .await,
        "threshold",
    );
    refused(
        &rigctl(&control, &["tenants", "set", "acme", "colour", "blue"]).await,
        "unknown setting",
    );
    refused(
        &rigctl(&control, &["tenants", "set", "acme", "notifier.events", "NOT_A_TYPE"]).await,
        "not an event type",
    );
    let list = ok(&rigctl(&control, &["tenants", "list", "--json"]).await)
        .stdout
        .clone();
    assert!(!list.contains("s3cret-value"), "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows[0]["tenant"], "default");
    let acme_row = rows.iter().find(|r| r["tenant"] == "acme").unwrap();
    assert_eq!(acme_row["settings"]["stale_heartbeat.threshold"], "45m");
    assert_eq!(acme_row["settings"]["github.webhook_secret"], "(set)");
    let human = ok(&rigctl(&control, &["tenants", "list"]).await).stdout.clone();
    assert!(human.contains("acme") && !human.contains("s3cret-value"), "{human}");
    ok(&rigctl(
        &control,
        &["tenants", "set", "acme", "stale_heartbeat.threshold", "--unset"],
    )
    .await);
    assert_eq!(
        control
            .count("SELECT count(*) FROM tenant_settings WHERE key = 'stale_heartbeat.threshold'")
            .await,
        0
    );

    // Disable and enable.
    ok(&rigctl(&control, &["tenants", "disable", "acme"]).await);
    assert_eq!(control.count("SELECT count(*) FROM tenants WHERE NOT enabled").await, 1);
    ok(&rigctl(&control, &["tenants", "enable", "acme"]).await);
    assert_eq!(control.count("SELECT count(*) FROM tenants WHERE NOT enabled").await, 0);
    refused(
        &rigctl(&control, &["tenants", "disable", "default"]).await,
        "always served",
    );

    // migrate: the control database and every tenant's.
    let r = ok(&rigctl(&control, &["migrate"]).await).stdout.clone();
    assert!(
        r.contains("migrated tenant acme") && r.contains(&format!("migrated tenant {slug}")),
        "{r}"
    );

    // consumers: one row per (consumer, tenant), with the tenant named.
    let r = ok(&rigctl(&control, &["consumers", "--json"]).await).stdout.clone();
    let rows: Value = serde_json::from_str(&r).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3 * rig_projections::CONSUMERS.len(), "{r}");
    for t in ["default", "acme", slug.as_str()] {
        assert_eq!(
            rows.iter().filter(|o| o["tenant"] == t).count(),
            rig_projections::CONSUMERS.len()
        );
    }
    let r = ok(&rigctl(&control, &["consumers", "--tenant", "acme"]).await)
        .stdout
        .clone();
    assert!(
        r.contains("token-projector") && r.contains("acme") && !r.contains("default"),
        "{r}"
    );
    refused(&rigctl(&control, &["consumers", "--tenant", "nope"]).await, "no tenant");
    // Per-tenant reset and inspection reach that tenant's log.
    ok(&rigctl(&control, &["reset", "token-projector", "--tenant", "acme"]).await);
    let reset_in_acme: i64 = sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE consumer = 'token-projector'")
        .fetch_one(&acme)
        .await
        .unwrap();
    assert_eq!(reset_in_acme, 1);
    assert_eq!(
        control
            .count("SELECT count(*) FROM checkpoints WHERE consumer = 'token-projector'")
            .await,
        0
    );
    ok(&rigctl(&control, &["issues", "--tenant", "acme", "--json"]).await);
    acme.close().await;
}
