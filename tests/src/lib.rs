//! Fixtures for end-to-end tests: a real `ridegate` process on a free loopback port,
//! with a population, issuer keys and a configuration written to a temp directory, and
//! a gRPC client for it. The process is killed when the fixture is dropped.

pub mod codes;
pub mod pki;
pub mod platform;
pub mod raw;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ridegate_adapters::test_util::{
    CallerKind, CallerTokenMinter, CodeMinter, SigningAlg, SigningKey, synthetic_resident_id,
};
use ridegate_proto::pb;
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::links_client::LinksClient;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, ClientTlsConfig};

/// The pseudonym secret the fixtures configure.
pub const SECRET: &str = "e2e-test-secret-0123456789";

/// The environment variable that names the `ridegate` binary to test, instead of the
/// one built next to the test executable.
pub const BIN_ENV: &str = "RIDEGATE_BIN";

/// The binary under test: `$RIDEGATE_BIN`, else `ridegate` in the directory cargo
/// builds binaries into, which holds the test executable's `deps/` folder (the binary
/// is in another package, so cargo does not point at it). `cargo nextest run
/// --workspace` builds it first.
pub fn binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os(BIN_ENV) {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .filter(|deps| deps.ends_with("deps"))
            .and_then(Path::parent)
            .unwrap_or_else(|| exe.parent().expect("a directory"));
        let path = dir.join(format!("ridegate{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.is_file(),
            "the ridegate binary is not at {}: build it with `cargo build -p ridegate-tools` \
             (same profile as the tests), or set {BIN_ENV}",
            path.display()
        );
        path
    })
}

/// Milliseconds since the Unix epoch now.
pub fn now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// A health status to give a rider.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    /// `green`, `yellow` or `red`.
    pub colour: &'static str,
    /// Hours since the last negative test, if any.
    pub tested_hours_ago: Option<i64>,
}

/// Green with a test 3 hours ago: allowed under the default policy.
pub const GREEN: Status = Status {
    colour: "green",
    tested_hours_ago: Some(3),
};
/// Yellow.
pub const YELLOW: Status = Status {
    colour: "yellow",
    tested_hours_ago: Some(3),
};
/// Red.
pub const RED: Status = Status {
    colour: "red",
    tested_hours_ago: Some(3),
};
/// Green but never tested.
pub const UNTESTED: Status = Status {
    colour: "green",
    tested_hours_ago: None,
};

/// An issuer the fixture configures, with its signing key.
#[derive(Clone)]
pub struct Issuer {
    /// Its id.
    pub id: String,
    /// Mints its codes.
    pub minter: CodeMinter,
    key: SigningKey,
    revoked: Vec<String>,
}

impl Issuer {
    /// The issuer's signing key (to forge codes that misuse it).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
}

/// The key id of the caller key every fixture configures.
pub const CALLER_KID: &str = "callers-e2e";

/// Builds a gateway process.
pub struct GatewayBuilder {
    issuers: Vec<Issuer>,
    links: Vec<String>,
    statuses: Vec<String>,
    stations: BTreeMap<String, &'static str>,
    extra_toml: String,
    feed: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
    server: String,
    links_extra: String,
    health_extra: String,
    audit_extra: String,
    callers_extra: String,
    tls: Option<pki::CertPair>,
    client_ca: Option<String>,
    tls_extra: String,
    platform: Option<String>,
    callers: bool,
    secret: bool,
    caller_key: SigningKey,
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Mints caller tokens the gateway accepts.
    pub callers: CallerTokenMinter,
    /// Where it listens for gRPC.
    pub addr: String,
    /// Where it serves `/metrics`, `/readyz` and `/livez`.
    pub admin: String,
    /// Its working directory (config, data files, the data directory, audit, logs).
    pub dir: tempfile::TempDir,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// An empty population, no issuer keys, default policy.
    pub fn new() -> Self {
        Self {
            issuers: Vec::new(),
            links: Vec::new(),
            statuses: Vec::new(),
            stations: BTreeMap::new(),
            extra_toml: String::new(),
            feed: false,
            env: Vec::new(),
            args: Vec::new(),
            server: String::new(),
            links_extra: String::new(),
            health_extra: String::new(),
            audit_extra: String::new(),
            callers_extra: String::new(),
            tls: None,
            client_ca: None,
            tls_extra: String::new(),
            platform: None,
            callers: true,
            secret: true,
            caller_key: SigningKey::generate(SigningAlg::EdDsa, CALLER_KID).expect("caller key"),
        }
    }

    /// Configures `id` (built-in or not) with a fresh key of `alg`, key id `<id>-1`.
    pub fn issuer(mut self, id: &str, alg: SigningAlg) -> Self {
        let key = SigningKey::generate(alg, format!("{id}-1")).expect("key");
        self.issuers.push(Issuer {
            id: id.into(),
            minter: CodeMinter::new(id, key.clone()),
            key,
            revoked: Vec::new(),
        });
        self
    }

    /// Revokes device certificate `cert_id` for the last issuer added.
    pub fn revoke(mut self, cert_id: &str) -> Self {
        self.issuers
            .last_mut()
            .expect("an issuer first")
            .revoked
            .push(cert_id.into());
        self
    }

    /// Links a card to the `person`-th synthetic resident.
    pub fn card(mut self, number: &str, person: u64) -> Self {
        self.links.push(format!(
            r#"{{"card": {{"number": "{number}"}}, "id_number": "{}"}}"#,
            synthetic_resident_id(person)
        ));
        self
    }

    /// Links a ride account to the `person`-th synthetic resident.
    pub fn account(mut self, issuer: &str, account: &str, person: u64) -> Self {
        self.links.push(format!(
            r#"{{"ride_account": {{"issuer": "{issuer}", "account": "{account}"}}, "id_number": "{}"}}"#,
            synthetic_resident_id(person)
        ));
        self
    }

    /// Links a ticket to the `person`-th synthetic resident.
    pub fn ticket(mut self, kind: &str, number: &str, person: u64) -> Self {
        self.links.push(format!(
            r#"{{"ticket": {{"kind": "{kind}", "number": "{number}"}}, "id_number": "{}"}}"#,
            synthetic_resident_id(person)
        ));
        self
    }

    /// Gives the `person`-th synthetic resident a health status.
    pub fn status(mut self, person: u64, status: Status) -> Self {
        let at = now();
        let mut line = format!(
            r#"{{"id_number": "{}", "colour": "{}", "set_at_unix_ms": {}"#,
            synthetic_resident_id(person),
            status.colour,
            at - 60_000
        );
        if let Some(hours) = status.tested_hours_ago {
            let _ = write!(line, r#", "negative_test_at_unix_ms": {}"#, at - hours * 3_600_000);
        }
        line.push('}');
        self.statuses.push(line);
        self
    }

    /// Sets a station's mode (`enforce`, `shadow`, `off`).
    pub fn station(mut self, station: &str, mode: &'static str) -> Self {
        self.stations.insert(station.into(), mode);
        self
    }

    /// Serves the health feed.
    pub fn feed(mut self) -> Self {
        self.feed = true;
        self
    }

    /// Appends raw TOML to the configuration (for sections the builder does not cover).
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra_toml.push_str(extra);
        self.extra_toml.push('\n');
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds a line to the `[server]` section.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push_str(line);
        self.server.push('\n');
        self
    }

    /// Adds a line to the `[links]` section.
    pub fn links_setting(mut self, line: &str) -> Self {
        self.links_extra.push_str(line);
        self.links_extra.push('\n');
        self
    }

    /// Adds a line to the `[health]` section.
    pub fn health_setting(mut self, line: &str) -> Self {
        self.health_extra.push_str(line);
        self.health_extra.push('\n');
        self
    }

    /// Adds a line to the `[audit]` section.
    pub fn audit_setting(mut self, line: &str) -> Self {
        self.audit_extra.push_str(line);
        self.audit_extra.push('\n');
        self
    }

    /// Serves TLS with `server` (written to `server.pem` and `server.key.pem`).
    pub fn tls(mut self, server: pki::CertPair) -> Self {
        self.tls = Some(server);
        self
    }

    /// Requires client certificates from the CA `ca_pem` (written to `client-ca.pem`):
    /// mutual TLS, each gate bound to its certificate's gate id.
    pub fn client_ca(mut self, ca_pem: &str) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Adds a line to the `[server.tls]` section.
    pub fn tls_setting(mut self, line: &str) -> Self {
        self.tls_extra.push_str(line);
        self.tls_extra.push('\n');
        self
    }

    /// Adds a line to the `[callers]` section.
    pub fn callers_setting(mut self, line: &str) -> Self {
        self.callers_extra.push_str(line);
        self.callers_extra.push('\n');
        self
    }

    /// Takes statuses from the health platform at `url` (instead of a statuses file),
    /// with extra `[health.platform]` lines.
    pub fn platform(mut self, url: &str, settings: &str) -> Self {
        self.platform = Some(format!("url = \"{url}\"\n{settings}\n"));
        self
    }

    /// Configures no caller keys.
    pub fn without_callers(mut self) -> Self {
        self.callers = false;
        self
    }

    /// Adds a command-line argument after `serve --config … --ready-file …`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The issuers configured so far.
    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// Configures no pseudonym secret: the gateway makes one and keeps it in its data
    /// directory. Links and statuses then name riders by ID number only.
    pub fn generated_secret(mut self) -> Self {
        self.secret = false;
        self
    }

    /// Writes the files and starts a process; returns once it listens. Call it again
    /// for a second instance with the same keys, population and configuration.
    pub async fn start(&self) -> (Gateway, Vec<Issuer>) {
        self.start_in(tempfile::tempdir().expect("tempdir")).await
    }

    /// Starts a process in `dir` (its files written again), keeping what the data
    /// directory there holds.
    async fn start_in(&self, dir: tempfile::TempDir) -> (Gateway, Vec<Issuer>) {
        let _ = std::fs::remove_file(dir.path().join("ready.json"));
        let config = self.write_files(dir.path());
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(dir.path().join("ready.json"))
            .args(&self.args)
            .env_remove("RIDEGATE_LISTEN")
            .env_remove("RIDEGATE_AUDIT")
            .env_remove("RIDEGATE_CONFIG")
            .env_remove("RIDEGATE_IDENTITY_SECRET")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn ridegate");
        let ready = wait_ready_json(
            &dir.path().join("ready.json"),
            &dir.path().join("stderr.log"),
            "ridegate",
        )
        .await;
        let addr = ready["addr"].as_str().expect("addr").to_owned();
        let admin = ready["admin"].as_str().expect("admin address").to_owned();
        let callers = CallerTokenMinter::new(self.caller_key.clone());
        let gateway = Gateway {
            child,
            callers,
            addr,
            admin,
            dir,
        };
        gateway.wait_settled().await;
        (gateway, self.issuers.clone())
    }

    fn write_files(&self, dir: &Path) -> PathBuf {
        // No drain delay unless a test asks for one: a stopped gateway stops at once.
        let drain_delay = if self.server.contains("drain_delay") {
            ""
        } else {
            "drain_delay = \"0s\"\n"
        };
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_grace = \"2s\"\n{drain_delay}{}\n[identity]\nsecret = \"{}\"\n\n\
             [storage]\ndata_dir = \"{}\"\n\n[audit]\npath = \"{}\"\n{}\n[log]\nfilter = \"info\"\n\n",
            self.server,
            if self.secret { SECRET } else { "" },
            dir.join("data").display(),
            dir.join("audit.jsonl").display(),
            self.audit_extra
        );
        if let Some(server) = &self.tls {
            std::fs::write(dir.join("server.pem"), &server.cert).expect("server cert");
            std::fs::write(dir.join("server.key.pem"), &server.key).expect("server key");
            let _ = write!(
                toml,
                "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
                dir.join("server.pem").display(),
                dir.join("server.key.pem").display(),
                self.tls_extra
            );
            if let Some(ca) = &self.client_ca {
                std::fs::write(dir.join("client-ca.pem"), ca).expect("client CA");
                let _ = writeln!(toml, "client_ca = \"{}\"", dir.join("client-ca.pem").display());
            }
            toml.push('\n');
        }
        let links = dir.join("links.jsonl");
        std::fs::write(&links, self.links.join("\n")).expect("links");
        let statuses = dir.join("health.jsonl");
        std::fs::write(&statuses, self.statuses.join("\n")).expect("statuses");
        let _ = write!(
            toml,
            "[links]\nfile = \"{}\"\n{}\n[health]\nfeed_enabled = {}\n{}",
            links.display(),
            self.links_extra,
            self.feed,
            self.health_extra
        );
        match &self.platform {
            None => {
                let _ = write!(toml, "file = \"{}\"\n\n", statuses.display());
            }
            Some(platform) => {
                let _ = write!(toml, "\n[health.platform]\n{platform}\n");
            }
        }
        if self.callers {
            let callers = dir.join("callers.jwks.json");
            let set = serde_json::json!({ "keys": [self.caller_key.public_jwk().expect("jwk")] });
            std::fs::write(&callers, set.to_string()).expect("caller jwks");
            let _ = write!(
                toml,
                "[callers]\njwks_file = \"{}\"\n{}\n",
                callers.display(),
                self.callers_extra
            );
        }
        for issuer in &self.issuers {
            let jwks = dir.join(format!("{}.jwks.json", issuer.id));
            let set = serde_json::json!({ "keys": [issuer.key.public_jwk().expect("jwk")] });
            std::fs::write(&jwks, set.to_string()).expect("jwks");
            let revoked: Vec<String> = issuer.revoked.iter().map(|r| format!("\"{r}\"")).collect();
            let _ = write!(
                toml,
                "[issuers.{}]\njwks_file = \"{}\"\nrevoked_certificates = [{}]\n\n",
                issuer.id,
                jwks.display(),
                revoked.join(", ")
            );
        }
        if !self.stations.is_empty() {
            toml.push_str("[policy.stations]\n");
            for (station, mode) in &self.stations {
                let _ = writeln!(toml, "{station} = \"{mode}\"");
            }
            toml.push('\n');
        }
        toml.push_str(&self.extra_toml);
        let path = dir.join("ridegate.toml");
        std::fs::write(&path, toml).expect("config");
        path
    }
}

/// Waits for a process started with `--ready-file` to write its address.
pub async fn wait_ready(ready: &Path, log: &Path, what: &str) -> String {
    let value = wait_ready_json(ready, log, what).await;
    value["addr"].as_str().expect("addr").to_owned()
}

/// Waits for a process started with `--ready-file` to write it, and reads it.
pub async fn wait_ready_json(ready: &Path, log: &Path, what: &str) -> serde_json::Value {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(ready) {
            return serde_json::from_str(&text).expect("ready file is JSON");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what} did not become ready; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl Gateway {
    /// Waits (up to 10 s) until `ridegate.v1.Gate` reports SERVING — a start-up import
    /// into Redis has landed — or `ridegate.v1.SharedState` reports NOT_SERVING (then
    /// the import waits for Redis, and so does the test).
    async fn wait_settled(&self) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let mut health = HealthClient::new(self.channel().await);
        for _ in 0..200 {
            let mut status = async |service: &str| {
                let request = HealthCheckRequest {
                    service: service.into(),
                };
                health.check(request).await.ok().map(|r| r.into_inner().status())
            };
            if status("ridegate.v1.Gate").await == Some(ServingStatus::Serving)
                || status("ridegate.v1.SharedState").await == Some(ServingStatus::NotServing)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// A TLS channel to it with `tls`, or the connection error (a refused handshake).
    pub async fn tls_channel(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A gate client over TLS with `tls`.
    pub async fn gate_over(&self, tls: ClientTlsConfig) -> GateClient<Channel> {
        GateClient::new(self.tls_channel(tls).await.expect("TLS connect"))
    }

    /// A file in its working directory (`server.pem`, `client-ca.pem`, …).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A gate client.
    pub async fn gate(&self) -> GateClient<Channel> {
        GateClient::new(self.channel().await)
            .max_decoding_message_size(4 << 20)
            .max_encoding_message_size(4 << 20)
    }

    /// The audit events written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        // The writer flushes every few milliseconds: a line still being written is not
        // read yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// A caller token of `kind` for `id` (and `issuer`, for apps), valid for an hour.
    pub fn token(&self, kind: CallerKind, id: &str, issuer: Option<&str>) -> String {
        self.callers
            .token(kind, id, issuer, now(), Duration::from_secs(3600))
            .expect("token")
    }

    /// A Links client.
    pub async fn links(&self) -> LinksClient<Channel> {
        LinksClient::new(self.channel().await)
    }

    /// The Prometheus page at `GET /metrics` on the admin listener, with the status
    /// line and headers.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// `GET path` on the admin listener: the whole HTTP/1.1 response.
    pub async fn admin_get(&self, path: &str) -> String {
        http_get(&self.admin, path).await
    }

    /// `POST path` on the admin listener: the whole HTTP/1.1 response.
    pub async fn admin_post(&self, path: &str) -> String {
        http_request(&self.admin, "POST", path).await
    }

    /// The value of an unlabelled metric (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let page = self.metrics().await;
        page.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Everything the process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits within 20 s")
            .expect("wait");
        (exit, self)
    }

    /// Kills the process with SIGKILL — no drain, no flush: a crash — and waits for it.
    pub async fn kill(mut self) -> Self {
        self.child.kill().await.expect("kill -9");
        self
    }

    /// Starts `builder`'s configuration again in this gateway's directory, on the same
    /// data directory (stop or [`kill`](Self::kill) this one first).
    pub async fn restart(self, builder: &GatewayBuilder) -> Gateway {
        builder.start_in(self.dir).await.0
    }

    /// The data directory (`data/` in its directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Sends SIGHUP: reload keys and certificates.
    pub fn reload(&self) {
        let status = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to 10 s for `line` to appear in the log.
    pub async fn wait_for_log(&self, line: &str) {
        for _ in 0..200 {
            if self.log().contains(line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{line:?} never logged; the log:\n{}", self.log());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `GET path` from `addr` over HTTP/1.1: the whole response, or what the server sent
/// before closing (empty if it refused).
pub async fn http_get(addr: &str, path: &str) -> String {
    http_request(addr, "GET", path).await
}

/// `method path` (no body) to `addr` over HTTP/1.1: the whole response, or what the
/// server sent before closing (empty if it refused).
pub async fn http_request(addr: &str, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An offline decision as a gate library uploads it: gate `gate_id` let a green physical
/// card enter, under its own 16-byte `decision_id`.
pub fn offline_decision(gate_id: &str, decision_id: [u8; 16]) -> pb::OfflineDecision {
    pb::OfflineDecision {
        gate_id: gate_id.into(),
        direction: pb::Direction::Entry.into(),
        decided_at_ms: now(),
        credential_kind: Some(pb::offline_decision::CredentialKind::Card(
            pb::CardMedium::Physical.into(),
        )),
        verdict: pb::Verdict::Allow.into(),
        reason: pb::Reason::HealthGreen.into(),
        mode: pb::CheckMode::Enforce.into(),
        decision_id: decision_id.to_vec(),
        ..pb::OfflineDecision::default()
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

/// A tap request.
pub fn tap(credential: pb::authorize_request::Credential) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        request_id: String::new(),
        gate: Some(pb::GateContext {
            gate_id: "L10-S07-G03".into(),
            station_id: "S07".into(),
            line_id: "L10".into(),
            direction: pb::Direction::Entry.into(),
            tapped_at_unix_ms: now(),
            budget_ms: 0,
        }),
        credential: Some(credential),
    }
}

/// A card credential.
pub fn card(number: &str) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::Card(pb::Card {
        medium: pb::CardMedium::Physical.into(),
        number: number.into(),
    })
}

/// A ride-code credential.
pub fn code(qr_text: &str) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::RideCode(pb::RideCode {
        qr_text: qr_text.into(),
    })
}

/// A ticket credential.
pub fn ticket(kind: pb::TicketKind, number: &str) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::Ticket(pb::Ticket {
        kind: kind.into(),
        number: number.into(),
    })
}

/// An uncovered credential.
pub fn uncovered(kind: pb::UncoveredKind) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::Uncovered(pb::UncoveredCredential { kind: kind.into() })
}

/// Helpers to change a tap.
pub trait TapExt {
    /// At this station.
    fn at(self, station: &str) -> Self;
    /// As an exit.
    fn exit(self) -> Self;
    /// With this request id.
    fn id(self, request_id: &str) -> Self;
}

impl TapExt for pb::AuthorizeRequest {
    fn at(mut self, station: &str) -> Self {
        self.gate.as_mut().expect("gate").station_id = station.into();
        self
    }

    fn exit(mut self) -> Self {
        self.gate.as_mut().expect("gate").direction = pb::Direction::Exit.into();
        self
    }

    fn id(mut self, request_id: &str) -> Self {
        self.request_id = request_id.into();
        self
    }
}

/// The verdict and reason of a response.
pub fn outcome(r: &pb::AuthorizeResponse) -> (pb::Verdict, pb::Reason) {
    (r.verdict(), r.reason())
}
