//! Migrations, the application role and the first admin key.

use sqlx::Row;
use tenlyr::storage::migrate;

use crate::helpers::{TestDb, app_db, serve_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_for_concurrent_replicas() {
    let db = TestDb::empty().await;
    let (a, b, c) = tokio::join!(
        migrate::run(&db.url),
        migrate::run(&db.url),
        migrate::run(&db.url)
    );
    let applied = a.unwrap() + b.unwrap() + c.unwrap();
    let mut conn = db.connect().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenlyr_schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied as i64, rows, "each migration applied exactly once");
    assert_eq!(migrate::run(&db.url).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_as_a_role_without_bypassrls() {
    let db = TestDb::migrated().await;
    let app = app_db(&db.url, 1).await;
    let row = sea_orm::ConnectionTrait::query_one_raw(
        app.app(),
        sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT current_user::text AS who, r.rolbypassrls, r.rolsuper FROM pg_roles r WHERE r.rolname = current_user",
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(row.try_get::<String>("", "who").unwrap(), "tenlyr_app");
    assert!(!row.try_get::<bool>("", "rolbypassrls").unwrap());
    assert!(!row.try_get::<bool>("", "rolsuper").unwrap());
    app.close().await;

    let mut owner = db.connect().await;
    let owned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tableowner = 'tenlyr_app'")
            .fetch_one(&mut owner)
            .await
            .unwrap();
    assert_eq!(owned, 0, "the application role owns nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_exactly_one_admin_key_even_with_two_replicas() {
    let db = TestDb::migrated().await;
    let config = serve_config(&db.url);
    let (a, b) = tokio::join!(
        tenlyr::app::Server::bind(&config, &db.url),
        tenlyr::app::Server::bind(&config, &db.url)
    );
    a.unwrap();
    b.unwrap();
    let mut conn = db.connect().await;
    let rows = sqlx::query("SELECT label, prefix, key_digest FROM admin_keys")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<String, _>("label"), "bootstrap");
    assert!(
        rows[0]
            .get::<String, _>("prefix")
            .starts_with("tenlyr_live_tf_")
    );
    assert_eq!(
        rows[0].get::<Vec<u8>, _>("key_digest").len(),
        32,
        "HMAC-SHA256 digest, not the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_pool_cannot_regain_the_owner_role_or_read_unscoped() {
    let db = TestDb::migrated().await;
    crate::helpers::create_admin_key(&db.url, "x").await;
    let app = app_db(&db.url, 1).await;
    let mut conn = app.pool().acquire().await.unwrap();
    let who = |sql: &'static str| sqlx::query_scalar::<_, String>(sql);
    assert_eq!(
        who("SELECT session_user::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
        "tenlyr_app",
        "the pool logs in as the application role itself"
    );
    // RESET ROLE returns to the login role, which is tenlyr_app.
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    assert_eq!(
        who("SELECT current_user::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
        "tenlyr_app"
    );
    let err = sqlx::query("SET ROLE postgres")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("permission denied"),
        "SET ROLE postgres: {err}"
    );
    assert_eq!(
        who("SELECT current_user::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
        "tenlyr_app"
    );
    // Tenant rows exist, yet without a scope none is visible.
    let mut owner = db.connect().await;
    let provisioned = sqlx::query(
        "INSERT INTO tenants (id, name, slug, owner_email, plan, status, region, time_zone, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'Acme', 'acme', 'a@acme.test', 'starter', 'active', 'us-east-1', 'UTC', now(), now())",
    )
    .execute(&mut owner)
    .await
    .unwrap();
    assert_eq!(provisioned.rows_affected(), 1);
    for table in [
        "tenants",
        "api_keys",
        "tenant_settings",
        "audit_log",
        "usage_events",
        "usage_rollups",
    ] {
        let visible: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(visible, 0, "{table} is readable without a tenant scope");
    }
    let statement_timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(statement_timeout, "30s", "request statements are bounded");
}

/// A transaction PostgreSQL rolls back for a concurrent one (a deadlock,
/// a serialization failure) did nothing: the client gets 503 with
/// `Retry-After` and the reason `CONCURRENT_CHANGE`, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_or_serialization_failure_answers_retry_not_500() {
    use tenlyr::error::{ApiError, CONCURRENT_CHANGE, ErrorCode};
    let db = TestDb::empty().await;
    let mut conn = db.connect().await;
    for code in ["40P01", "40001"] {
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN RAISE EXCEPTION 'rolled back' USING ERRCODE = '{code}'; END $$"
        )))
        .execute(&mut conn)
        .await
        .unwrap_err();
        let api = ApiError::from(err);
        assert_eq!(api.code, ErrorCode::Unavailable, "{code}");
        assert_eq!(api.code.http_status(), 503);
        assert_eq!(api.reason, Some(CONCURRENT_CHANGE));
        assert_eq!(api.retry_after, Some(std::time::Duration::from_secs(1)));
    }
    // Any other database error stays an internal one.
    let err = sqlx::query("SELECT 1/0")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(ApiError::from(err).code, ErrorCode::Internal);
}
