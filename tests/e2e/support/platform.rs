//! The health-code platform for tests: the real `ridegate health-sim` process on a
//! loopback port, with a generated population, and a client for its control API.

use std::process::Stdio;

use ridegate::population::{HealthMix, Population, Role};
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_proto::pb;
use ridegate_proto::pb::health_simulator_client::HealthSimulatorClient;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::{SECRET, binary, now, wait_ready};

/// A running simulator.
pub struct HealthSim {
    child: Option<Child>,
    /// Where it listens (`127.0.0.1:port`).
    pub addr: String,
    /// Its population (the same seed and shares every test process computes).
    pub population: Population,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl HealthSim {
    /// A simulator serving `riders` generated riders (seed 1, default shares), with
    /// `extra` arguments (faults).
    pub async fn start(riders: u64, extra: &[&str]) -> Self {
        let population = Population {
            riders,
            seed: 1,
            mix: HealthMix::default(),
        };
        let mut sim = Self {
            child: None,
            addr: "127.0.0.1:0".into(),
            population,
            dir: tempfile::tempdir().expect("tempdir"),
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
            .arg(self.population.riders.to_string())
            .arg("--seed")
            .arg(self.population.seed.to_string())
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
            set_at_unix_ms: now().0,
            negative_test_at_unix_ms: now().0 - 3_600_000,
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
        (0..self.population.riders)
            .filter(|n| self.population.role(*n) == role)
            .take(count)
            .collect()
    }
}
