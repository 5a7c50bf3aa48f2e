//! The binary as operators use it: `admin create-key`, and `serve` on the
//! embedded default with graceful shutdown on SIGTERM.

use std::{process::Stdio, time::Duration};

use tenlyr::domain::keys::{self, KeyKind};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::helpers::{PEPPER, TestApp, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_tenlyr");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_key_prints_only_the_key() {
    let db = TestDb::migrated().await;
    let output = Command::new(BIN)
        .args(["admin", "create-key", "--label", "ops-laptop"])
        .env("DATABASE_URL", &db.url)
        .env("TENLYR_KEY_PEPPER", PEPPER)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout holds the key and nothing else: {stdout:?}"
    );
    assert_eq!(keys::parse(lines[0]), Ok(KeyKind::Admin));

    let mut conn = db.connect().await;
    let (label, prefix): (String, String) = sqlx::query_as("SELECT label, prefix FROM admin_keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(label, "ops-laptop");
    assert_eq!(prefix, &lines[0][..16]);
    let plaintext_stored: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM admin_keys WHERE position($1 in label || prefix || encode(key_digest, 'escape')) > 0)",
    )
    .bind(lines[0])
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!plaintext_stored, "the plaintext key is stored nowhere");

    let bad = Command::new(BIN)
        .args(["admin", "create-key", "--label", ""])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_the_server() {
    let app = TestApp::spawn().await;
    let url = app.url("/healthz");
    let http = app.http.clone();
    assert!(http.get(&url).send().await.unwrap().status().is_success());
    tokio::time::timeout(Duration::from_secs(10), app.shutdown())
        .await
        .expect("shutdown is prompt")
        .unwrap();
    assert!(http.get(&url).send().await.is_err(), "listener closed");
}

struct ServeProcess {
    child: Child,
    port: u16,
}

impl ServeProcess {
    async fn start(data_dir: &std::path::Path) -> (Self, Option<String>) {
        let port = crate::helpers::unclaimed_port();
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("TENLYR_DATA_DIR", data_dir)
            .env("TENLYR_LISTEN", format!("127.0.0.1:{port}"))
            .env("TENLYR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/readyz");
        for _ in 0..300 {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "tenlyr serve exited early"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The bootstrap key, if one was created, is the first stdout line.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let key = tokio::time::timeout(Duration::from_millis(300), lines.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten());
        (Self { child, port }, key)
    }

    async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_embedded_default_and_reuse_it() {
    let data_dir =
        std::env::temp_dir().join(format!("tenlyr-embedded-{}", uuid::Uuid::new_v4().simple()));
    let (server, key) = ServeProcess::start(&data_dir).await;
    let key = key.expect("the first start prints a bootstrap admin key");
    assert_eq!(keys::parse(&key), Ok(KeyKind::Admin));
    let http = reqwest::Client::new();
    let tenants = format!("http://127.0.0.1:{}/api/v1/tenants", server.port);
    let status = http
        .get(&tenants)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the key works");
    server.terminate().await;
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "the cluster stopped with the server"
    );

    let (server, second_key) = ServeProcess::start(&data_dir).await;
    assert_eq!(second_key, None, "the existing cluster and key are reused");
    let tenants = format!("http://127.0.0.1:{}/api/v1/tenants", server.port);
    let status = http
        .get(&tenants)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the old key (and pepper file) still work");
    server.terminate().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
