//! Upgrading a database: migrations whose comments were reworded after release are still
//! accepted on a database that applied their earlier text, and nothing else is.
#![allow(clippy::unwrap_used)]

use rig_tests::TestDb;

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
    let current = checksum(&db, 23).await;
    // As a database migrated before the comments of 0023 and 0024 were reworded holds them.
    set_checksum(
        &db,
        23,
        "7058319dc75d18a2e9323d2dd8b971ae2d2468ada2899af5e6bb6fa9b636c831f2905c1a00902d0d9bebc86b6940ef2b",
    )
    .await;
    set_checksum(
        &db,
        24,
        "d488ce63447b395e34b23315ef575ccf17ff79f7bd4448cb276119653b0a46ea2127c649212d9cc38278b151cf53f753",
    )
    .await;
    rig_log::db::migrate(&db.pool)
        .await
        .expect("the earlier text of a reworded migration is accepted");
    assert_eq!(checksum(&db, 23).await, current, "the current checksum is recorded");

    // Any other difference is still refused.
    set_checksum(&db, 23, &"00".repeat(48)).await;
    let err = rig_log::db::migrate(&db.pool)
        .await
        .expect_err("a changed migration is refused");
    assert!(format!("{err:#}").contains("23"), "{err:#}");
}
