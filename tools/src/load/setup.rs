//! `ridegate load-setup`: everything a load test needs, in one directory — issuer keys,
//! a linked population, its health statuses, a ridegate configuration, and the manifest
//! `ridegate load` reads to send what real gates send for that population.
//!
//! Rider `n` (see [`crate::population`]) has a transit card, an account at each of the
//! [`LOAD_ISSUERS`], and a commemorative ticket, all linked; statuses follow the
//! population's roles, so `ridegate health-sim --riders N --seed S` serves the same.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ridegate_adapters::credential::ride_code::{SigningAlg, SigningKey};
use ridegate_adapters::ids::random_hex;
use ridegate_core::clock::Clock;
use serde::{Deserialize, Serialize};

use crate::population::{HealthMix, Population};

/// The issuers a load-test population holds accounts at, with their key algorithms.
pub const LOAD_ISSUERS: [(&str, SigningAlg); 3] = [
    ("yitongxing", SigningAlg::Es256),
    ("alipay", SigningAlg::EdDsa),
    ("unionpay", SigningAlg::Es256),
];

/// The manifest file's name in a setup directory.
pub const MANIFEST: &str = "load.json";

/// What `ridegate load` needs to know about a setup directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Riders in the population.
    pub riders: u64,
    /// The seed of their health roles.
    pub seed: u64,
    /// Shares of the roles.
    pub mix: HealthMix,
    /// The issuers, with their private keys (paths relative to the directory).
    pub issuers: Vec<ManifestIssuer>,
}

/// One issuer of a setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestIssuer {
    /// The issuer id.
    pub id: String,
    /// The key's algorithm.
    pub alg: SigningAlg,
    /// The key id.
    pub kid: String,
    /// The private key (PKCS#8 PEM), relative to the directory.
    pub key_file: PathBuf,
}

impl Manifest {
    /// Reads `<dir>/load.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (made by `ridegate load-setup`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a load manifest", path.display()))
    }

    /// The population it describes.
    pub fn population(&self) -> Population {
        Population {
            riders: self.riders,
            seed: self.seed,
            mix: self.mix,
        }
    }

    /// The issuers' signing keys.
    pub fn signing_keys(&self, dir: &Path) -> anyhow::Result<Vec<(String, SigningKey)>> {
        self.issuers
            .iter()
            .map(|issuer| {
                let path = dir.join(&issuer.key_file);
                let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let key = SigningKey::from_pkcs8_pem(&pem, issuer.kid.clone())
                    .with_context(|| format!("{} is not a private key", path.display()))?;
                Ok((issuer.id.clone(), key))
            })
            .collect()
    }
}

/// Rider `n`'s commemorative ticket number.
pub fn ticket_number(n: u64) -> String {
    format!("CM-{n:010}")
}

/// Writes a setup for `population` into `dir` (created if missing; files in it are
/// replaced). Returns the paths of the configuration and the manifest.
pub fn write_setup(dir: &Path, population: &Population) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir.join("issuers")).with_context(|| format!("cannot create {}", dir.display()))?;
    let secret = random_hex::<24>();
    let mut issuers = Vec::new();
    let mut issuer_toml = String::new();
    for (id, alg) in LOAD_ISSUERS {
        let kid = format!("{id}-load");
        let key = SigningKey::generate(alg, &kid)?;
        let key_file = PathBuf::from("issuers").join(format!("{id}.key.pem"));
        write_private(&dir.join(&key_file), &key.to_pkcs8_pem())?;
        let jwks = dir.join("issuers").join(format!("{id}.jwks.json"));
        std::fs::write(&jwks, serde_json::json!({ "keys": [key.public_jwk()?] }).to_string())
            .with_context(|| format!("cannot write {}", jwks.display()))?;
        issuer_toml.push_str(&format!("[issuers.{id}]\njwks_file = {:?}\n\n", absolute(&jwks)));
        issuers.push(ManifestIssuer {
            id: id.into(),
            alg,
            kid,
            key_file,
        });
    }
    let links = dir.join("links.jsonl");
    let health = dir.join("health.jsonl");
    write_population(population, &links, &health)?;
    let config = dir.join("ridegate.toml");
    let toml = format!(
        "# Written by `ridegate load-setup` for {} riders (seed {}).\n\n\
         # No load balancer to drain for: stop at once on SIGTERM.\n[server]\ndrain_delay = \"0s\"\n\n\
         [identity]\nsecret = \"{secret}\"\n\n\
         [links]\nfile = {:?}\n\n[health]\nfile = {:?}\n\n{issuer_toml}[audit]\npath = \"/dev/null\"\n\n\
         [log]\nfilter = \"warn\"\n",
        population.riders,
        population.seed,
        absolute(&links),
        absolute(&health),
    );
    std::fs::write(&config, toml).with_context(|| format!("cannot write {}", config.display()))?;
    let manifest = Manifest {
        riders: population.riders,
        seed: population.seed,
        mix: population.mix,
        issuers,
    };
    let manifest_path = dir.join(MANIFEST);
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    std::fs::write(dir.join("secret"), &secret).context("cannot write the secret file")?;
    Ok((config, manifest_path))
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

fn write_population(population: &Population, links: &Path, health: &Path) -> anyhow::Result<()> {
    let create = |path: &Path| {
        File::create(path)
            .map(|f| BufWriter::with_capacity(1 << 20, f))
            .with_context(|| format!("cannot create {}", path.display()))
    };
    let (mut links, mut health) = (create(links)?, create(health)?);
    let now = Clock::System.now();
    for n in 0..population.riders {
        let id = Population::resident_id(n);
        writeln!(
            links,
            r#"{{"card": {{"number": "{}"}}, "id_number": "{id}"}}"#,
            Population::card_number(n)
        )?;
        for (issuer, _) in LOAD_ISSUERS {
            writeln!(
                links,
                r#"{{"ride_account": {{"issuer": "{issuer}", "account": "{}"}}, "id_number": "{id}"}}"#,
                Population::account(issuer, n)
            )?;
        }
        writeln!(
            links,
            r#"{{"ticket": {{"kind": "commemorative", "number": "{}"}}, "id_number": "{id}"}}"#,
            ticket_number(n)
        )?;
        if let Some(status) = population.status(n, now) {
            let colour = serde_json::to_string(&status.colour)?;
            let tested = status
                .negative_test_at
                .map(|t| format!(r#", "negative_test_at_unix_ms": {}"#, t.0))
                .unwrap_or_default();
            writeln!(
                health,
                r#"{{"id_number": "{id}", "colour": {colour}, "set_at_unix_ms": {}{tested}}}"#,
                status.set_at.0
            )?;
        }
    }
    links.flush()?;
    health.flush()?;
    Ok(())
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
