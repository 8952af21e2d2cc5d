//! What the benchmarks that run the real binary share: starting it on loopback,
//! reaching it, reading its metrics and memory, and caller tokens.

// Each benchmark is a crate of its own and uses only part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ridegate_adapters::caller::{CallerKind, CallerTokenMinter};
use ridegate_adapters::credential::ride_code::{SigningAlg, SigningKey};
use ridegate_core::clock::Clock;
use tonic::transport::Channel;

/// A `ridegate serve` process on loopback, killed when dropped.
pub(crate) struct Ridegate {
    child: std::process::Child,
    /// The gate port.
    pub(crate) addr: String,
    /// The admin port.
    pub(crate) admin: String,
}

impl Drop for Ridegate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ridegate {
    /// Starts `ridegate serve` (audit to /dev/null, warnings only) with the config file
    /// `config` and `args`, its ready file `<name>.ready.json` in `dir`; waits for it.
    pub(crate) async fn start(dir: &Path, name: &str, config: &Path, args: &[String]) -> Self {
        let ready = dir.join(format!("{name}.ready.json"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ridegate"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--audit",
                "/dev/null",
                "--log",
                "warn",
                "--ready-file",
            ])
            .arg(&ready)
            .args(args)
            .env("RIDEGATE_IDENTITY_SECRET", "benchmark-secret")
            .env("RIDEGATE_CONFIG", config)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !ready.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "ridegate did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        Self {
            child,
            addr: ready["addr"].as_str().unwrap().to_owned(),
            admin: ready["admin"].as_str().unwrap().to_owned(),
        }
    }

    /// A connected channel to the gate port.
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A metric from the admin port.
    pub(crate) fn metric(&self, name: &str) -> u64 {
        metric(&self.admin, name).unwrap_or_else(|| panic!("no {name}"))
    }

    /// Resident memory, from `/proc`.
    pub(crate) fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }
}

/// A `redis-server` of the benchmark's own on a free loopback port (no persistence),
/// killed when dropped.
pub(crate) struct Redis(std::process::Child, pub(crate) u16);

impl Redis {
    /// Starts it and waits until it accepts connections.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A caller key set for the benchmark, and tokens signed with it.
pub(crate) struct Callers {
    minter: CallerTokenMinter,
    jwks: PathBuf,
}

impl Callers {
    /// A fresh key, its public key set written into `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        let key = SigningKey::generate(SigningAlg::EdDsa, "bench-callers").unwrap();
        let jwks = dir.join("callers.jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({ "keys": [key.public_jwk().unwrap()] }).to_string(),
        )
        .unwrap();
        Self {
            minter: CallerTokenMinter::new(key),
            jwks,
        }
    }

    /// The `[callers] jwks_file` line for a config file.
    pub(crate) fn config_line(&self) -> String {
        format!("[callers]\njwks_file = {:?}\n", self.jwks.display().to_string())
    }

    /// A token for a caller of `kind`, valid an hour.
    pub(crate) fn token(&self, kind: CallerKind) -> String {
        self.minter
            .token(kind, "bench", None, Clock::System.now(), Duration::from_secs(3600))
            .unwrap()
    }
}

/// A gauge or counter from the admin port at `admin`, if it is there.
pub(crate) fn metric(admin: &str, name: &str) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `message` with `token` as its bearer.
pub(crate) fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The `q` quantile of `sorted`.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
