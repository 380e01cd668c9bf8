//! A real S3-compatible server for the tests: moto's server mode (PyPI `moto[server]`), started
//! on a free port of 127.0.0.1 for one test and stopped when dropped. The `moto_server` program
//! comes from `BACKFLOW_TEST_MOTO` (`.ci/run` installs it) or the PATH. Without it a test is
//! skipped with a message, except under `CI=true`, where it fails.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub const MOTO_ENV: &str = "BACKFLOW_TEST_MOTO";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl S3Server {
    /// Start a server holding one empty bucket, `bucket`; None (skipped) when there is no
    /// `moto_server`.
    pub async fn start(bucket: &str) -> Option<S3Server> {
        let program = std::env::var(MOTO_ENV).unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = match Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot start {program} (set {MOTO_ENV}): {e}");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("the S3 server is needed and CI=true: {why}");
                }
                eprintln!("SKIPPED: no S3-compatible server: {why}");
                return None;
            }
        };
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        // moto answers a bucket creation (PUT /<bucket>) without checking signatures.
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            match client
                .put(format!("{}/{bucket}", server.endpoint))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => panic!("moto refused to create bucket {bucket}: {}", r.status()),
                Err(_) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("moto_server did not come up on port {port}: {e}"),
            }
        }
        Some(server)
    }

    /// The environment a backflow process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "backflow-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "backflow-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// `s3://<bucket>/<key>`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// A client of the bucket, as backflow builds it from the environment.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(&self.bucket)
                .with_access_key_id("backflow-test")
                .with_secret_access_key("backflow-test-secret")
                .with_region("us-east-1")
                .build()
                .expect("an S3 client"),
        )
    }

    pub async fn put(&self, key: &str, bytes: impl Into<PutPayload>) {
        self.store()
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .expect("put an object");
    }

    /// The object's bytes, or None when there is none.
    pub async fn get(&self, key: &str) -> Option<bytes::Bytes> {
        match self.store().get(&ObjectPath::from(key)).await {
            Ok(g) => Some(g.bytes().await.expect("read an object")),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("read {key}: {e}"),
        }
    }

    /// Keys under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = self
            .store()
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list objects");
        keys.sort();
        keys
    }
}
