//! The health-code platform for tests: the real `ridegate health-sim` process on a
//! loopback port, with a generated population, and a client for its control API. Which
//! rider has which health code is learnt from the same population written out by
//! `ridegate load-setup` (same size and seed), not from ridegate's code.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use ridegate_adapters::test_util::synthetic_resident_id;
use ridegate_proto::pb;
use ridegate_proto::pb::health_simulator_client::HealthSimulatorClient;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{SECRET, binary, now, wait_ready};

/// The seed of every test population.
const SEED: u64 = 1;

/// What a generated rider's health code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Green, with a recent negative test.
    Green,
    /// Yellow.
    Yellow,
    /// Red.
    Red,
    /// Green, but no negative test on record.
    Untested,
    /// The platform has no record of the rider.
    NoRecord,
}

/// Rider `n`'s transit card number in these tests.
pub fn card_number(n: u64) -> String {
    format!("2000{n:012}")
}

/// A running simulator.
pub struct HealthSim {
    child: Option<Child>,
    /// Where it listens (`127.0.0.1:port`).
    pub addr: String,
    /// Each generated rider's role, by rider number.
    roles: Vec<Role>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl HealthSim {
    /// A simulator serving `riders` generated riders (seed 1, default shares), with
    /// `extra` arguments (faults).
    pub async fn start(riders: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let roles = roles(riders, dir.path()).await;
        let mut sim = Self {
            child: None,
            addr: "127.0.0.1:0".into(),
            roles,
            dir,
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        sim.launch().await;
        sim
    }

    async fn launch(&mut self) {
        let ready = self.dir.path().join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = self.dir.path().join("stderr.log");
        let child = Command::new(binary())
            .args(["health-sim", "--listen", &self.addr, "--riders"])
            .arg(self.roles.len().to_string())
            .arg("--seed")
            .arg(SEED.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .env("RIDEGATE_IDENTITY_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn health-sim");
        self.child = Some(child);
        self.addr = wait_ready(&ready, &log, "health-sim").await;
    }

    /// The URL ridegate is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process: connections are refused until [`HealthSim::restart`].
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill");
        }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("running");
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .expect("health-sim exits within 10 s of SIGTERM")
            .expect("wait")
    }

    /// Starts it again on the same port, with a fresh change log.
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    /// A control client.
    pub async fn control(&self) -> HealthSimulatorClient<Channel> {
        let channel = Channel::from_shared(self.url())
            .expect("uri")
            .connect()
            .await
            .expect("connect to health-sim");
        HealthSimulatorClient::new(channel)
    }

    /// Replaces the faults.
    pub async fn faults(&self, faults: pb::SimFaults) {
        self.control().await.set_faults(faults).await.expect("set faults");
    }

    /// Sets rider `n`'s colour, set now, tested an hour ago.
    pub async fn set_colour(&self, n: u64, colour: pb::HealthColour) {
        let update = pb::StatusUpdate {
            subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(n))),
            colour: colour.into(),
            set_at_unix_ms: now(),
            negative_test_at_unix_ms: now() - 3_600_000,
        };
        self.control().await.set_status(update).await.expect("set status");
    }

    /// Its counters.
    pub async fn stats(&self) -> pb::SimStats {
        self.control()
            .await
            .get_stats(pb::SimStatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }

    /// The first `count` riders with `role`.
    pub fn riders(&self, role: Role, count: usize) -> Vec<u64> {
        (0_u64..)
            .zip(&self.roles)
            .filter(|(_, r)| **r == role)
            .map(|(n, _)| n)
            .take(count)
            .collect()
    }
}

/// The roles of `riders` generated riders (seed [`SEED`], default shares), from the
/// statuses `ridegate load-setup` writes for them into `dir`: a rider with no line has
/// no record.
async fn roles(riders: u64, dir: &Path) -> Vec<Role> {
    let out = dir.join("population");
    let output = Command::new(binary())
        .args([
            "load-setup",
            "--riders",
            &riders.to_string(),
            "--seed",
            &SEED.to_string(),
            "--out",
        ])
        .arg(&out)
        .output()
        .await
        .expect("run ridegate load-setup");
    assert!(
        output.status.success(),
        "ridegate load-setup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let numbers: HashMap<String, usize> = (0..riders)
        .map(|n| (synthetic_resident_id(n), usize::try_from(n).expect("rider number")))
        .collect();
    let mut roles = vec![Role::NoRecord; numbers.len()];
    let statuses = std::fs::read_to_string(out.join("health.jsonl")).expect("load-setup's health.jsonl");
    for line in statuses.lines() {
        let status: serde_json::Value = serde_json::from_str(line).expect("a status line");
        let n = numbers[status["id_number"].as_str().expect("id_number")];
        let tested = status.get("negative_test_at_unix_ms").is_some();
        roles[n] = match (status["colour"].as_str().expect("colour"), tested) {
            ("green", true) => Role::Green,
            ("green", false) => Role::Untested,
            ("yellow", _) => Role::Yellow,
            ("red", _) => Role::Red,
            (other, _) => panic!("unknown colour {other}"),
        };
    }
    roles
}
