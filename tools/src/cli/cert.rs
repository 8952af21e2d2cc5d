//! `ridegate keys cert`: a test CA and the certificates issued under it — the server's,
//! each gate's (SAN URI `spiffe://<trust domain>/gate/<gate_id>`, which binds the gate
//! to its id), and other callers' — as PEM files, for trying TLS and mutual TLS out and
//! for tests. Production certificates come from the operator's own CA; the layout is the
//! same.
//!
//! Made with rcgen (ECDSA P-256, signed through aws-lc-rs, the provider the rest of
//! ridegate already uses).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::Failure;
use ridegate::config::DEFAULT_TRUST_DOMAIN;

/// `ridegate keys cert …`
#[derive(Debug, clap::Subcommand)]
pub(super) enum CertCommand {
    /// A CA: `<out>/ca.pem` (configure it as `server.tls.client_ca`, and give it to
    /// gates to verify the server) and `<out>/ca.key.pem` (private, mode 0600).
    Ca {
        /// The CA's common name.
        #[arg(long, default_value = "ridegate test CA")]
        name: String,
        /// Directory to write to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// How long it is valid.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1825days")]
        valid_for: Duration,
    },
    /// ridegate's server certificate: `<out>/server.pem` and `<out>/server.key.pem`.
    Server {
        #[command(flatten)]
        ca: CaFiles,
        /// DNS names the server answers to (repeatable).
        #[arg(long = "dns", default_value = "localhost")]
        dns: Vec<String>,
        /// IP addresses the server answers on (repeatable).
        #[arg(long = "ip", default_values = ["127.0.0.1", "::1"])]
        ips: Vec<IpAddr>,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// A gate's client certificate, naming its gate id:
    /// `<out>/gate-<gate_id>.pem` and `<out>/gate-<gate_id>.key.pem`.
    Gate {
        #[command(flatten)]
        ca: CaFiles,
        /// The gate id (as in `gate.gate_id`).
        #[arg(long)]
        gate_id: String,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// A non-gate caller's client certificate (`spiffe://<trust domain>/caller/<name>`),
    /// for deployments that require one from every client:
    /// `<out>/caller-<name>.pem` and `<out>/caller-<name>.key.pem`.
    Client {
        #[command(flatten)]
        ca: CaFiles,
        /// The caller's name, e.g. `upgrade-service`.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        leaf: LeafArgs,
    },
}

/// The CA that signs a certificate.
#[derive(Debug, clap::Args)]
pub(super) struct CaFiles {
    /// The CA certificate (from `keys cert ca`).
    #[arg(long, default_value = "ca.pem")]
    ca: PathBuf,
    /// The CA's private key.
    #[arg(long, default_value = "ca.key.pem")]
    ca_key: PathBuf,
}

/// Where a certificate goes and how long it lives.
#[derive(Debug, clap::Args)]
pub(super) struct LeafArgs {
    /// Directory to write to.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// How long it is valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "397days")]
    valid_for: Duration,
    /// The trust domain in SAN URIs (`server.tls.trust_domain`).
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
}

/// Runs `ridegate keys cert …`.
pub(super) fn run(command: CertCommand) -> Result<(), Failure> {
    match command {
        CertCommand::Ca { name, out, valid_for } => ca(&name, &out, valid_for).map_err(Failure::runtime),
        CertCommand::Server { ca, dns, ips, leaf } => {
            let mut sans = Vec::new();
            for name in dns {
                sans.push(SanType::DnsName(
                    name.try_into()
                        .map_err(|e| Failure::usage(anyhow::anyhow!("--dns: {e}")))?,
                ));
            }
            sans.extend(ips.into_iter().map(SanType::IpAddress));
            issue(
                &ca,
                &leaf,
                "server",
                "ridegate",
                sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }
        CertCommand::Gate { ca, gate_id, leaf } => {
            if gate_id.is_empty() || gate_id.len() > 64 || !gate_id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--gate-id: must be 1-64 printable characters without '/'"
                )));
            }
            let uri = format!("spiffe://{}/gate/{gate_id}", leaf.trust_domain);
            let san = SanType::URI(
                uri.try_into()
                    .map_err(|e| Failure::usage(anyhow::anyhow!("--gate-id: {e}")))?,
            );
            let file = format!("gate-{gate_id}");
            issue(
                &ca,
                &leaf,
                &file,
                &gate_id,
                vec![san],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        }
        CertCommand::Client { ca, name, leaf } => {
            let uri = format!("spiffe://{}/caller/{name}", leaf.trust_domain);
            let san = SanType::URI(
                uri.try_into()
                    .map_err(|e| Failure::usage(anyhow::anyhow!("--name: {e}")))?,
            );
            let file = format!("caller-{name}");
            issue(&ca, &leaf, &file, &name, vec![san], ExtendedKeyUsagePurpose::ClientAuth)
        }
    }
}

/// Validity from a minute ago (clock differences) for `valid_for`.
fn validity(params: &mut CertificateParams, valid_for: Duration) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::try_from(valid_for).context("--valid-for is too long")?;
    Ok(())
}

fn ca(name: &str, out: &Path, valid_for: Duration) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, valid_for)?;
    let cert = params.self_signed(&key)?;
    write_pair(out, "ca", &cert.pem(), &key.serialize_pem())
}

fn issue(
    ca: &CaFiles,
    leaf: &LeafArgs,
    file: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(), Failure> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .map_err(Failure::usage)
    };
    let ca_key = KeyPair::from_pem(&read(&ca.ca_key)?).map_err(|e| Failure::usage(anyhow::anyhow!("--ca-key: {e}")))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca.ca)?, ca_key).map_err(|e| Failure::usage(anyhow::anyhow!("--ca: {e}")))?;
    let made = (|| -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, leaf.valid_for)?;
        let cert = params.signed_by(&key, &issuer)?;
        write_pair(&leaf.out, file, &cert.pem(), &key.serialize_pem())
    })();
    made.map_err(Failure::runtime)
}

/// Writes `<out>/<name>.pem` and `<out>/<name>.key.pem` (mode 0600, never over an
/// existing key).
fn write_pair(out: &Path, name: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key_path = out.join(format!("{name}.key.pem"));
    super::keys::write_private(&key_path, key)?;
    let cert_path = out.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert).with_context(|| format!("cannot write {}", cert_path.display()))?;
    println!(
        "certificate: {}\nprivate key: {}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}
