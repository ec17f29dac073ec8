//! Upgrading a database: migrations whose comments were reworded after release are still
//! accepted on a database that applied their earlier text, and nothing else is.
#![allow(clippy::unwrap_used)]

use rig_tests::TestDb;

/// Each reworded migration and the SHA-384 of its text as first applied (written out here, apart
/// from the list `rig_log::db` accepts, so that a change to that list is seen).
const EARLIER: &[(i64, &str)] = &[
    (
        1,
        "2247f979baa1656531c2c22541caf1486b13a3d8346fea76ada396a7dc9519bc933572767e678c48fb9ce61997166df0",
    ),
    (
        21,
        "54deb5aa168bd01343c910cf2a8403c7111bb48147bb380b7d20e2210a67eec061e80bc622770275226c3376da513555",
    ),
    (
        22,
        "df875bf693620ce59abb4f265a3ecd9247e55bf8adda8efce32fb014a6074946b96b435c56e73c3d53c6c6556e332b74",
    ),
    (
        23,
        "7058319dc75d18a2e9323d2dd8b971ae2d2468ada2899af5e6bb6fa9b636c831f2905c1a00902d0d9bebc86b6940ef2b",
    ),
    (
        24,
        "d488ce63447b395e34b23315ef575ccf17ff79f7bd4448cb276119653b0a46ea2127c649212d9cc38278b151cf53f753",
    ),
    (
        25,
        "f7a68f3f7f424741f261a4ca2ecc8ccd7e7ff10a572c5e4e860644f1d967e81a29a1cdbfb0fdea232ac4155d94f795da",
    ),
];

async fn checksum(db: &TestDb, version: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
        .bind(version)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn set_checksum(db: &TestDb, version: i64, hex_text: &str) {
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($2, 'hex') WHERE version = $1")
        .bind(version)
        .bind(hex_text)
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_that_applied_the_earlier_comments_migrates_and_a_changed_file_does_not() {
    let db = TestDb::new().await;
    // As a database migrated before the comments were reworded holds them.
    let mut current = Vec::new();
    for (version, earlier) in EARLIER {
        let now = checksum(&db, *version).await;
        assert_ne!(hex::encode(&now), *earlier, "migration {version} was reworded");
        current.push(now);
        set_checksum(&db, *version, earlier).await;
    }
    rig_log::db::migrate(&db.pool)
        .await
        .expect("the earlier text of a reworded migration is accepted");
    for ((version, _), now) in EARLIER.iter().zip(&current) {
        assert_eq!(
            &checksum(&db, *version).await,
            now,
            "the current checksum of {version} is recorded"
        );
    }

    // Any other difference is still refused.
    set_checksum(&db, 23, &"00".repeat(48)).await;
    let err = rig_log::db::migrate(&db.pool)
        .await
        .expect_err("a changed migration is refused");
    assert!(format!("{err:#}").contains("23"), "{err:#}");
}
