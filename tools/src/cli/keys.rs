//! `ridegate keys`: issuer key pairs and real signed ride codes, for operators
//! onboarding an issuer and for tests; caller tokens; test certificates (`keys cert`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use ridegate_adapters::caller::{CallerKind, CallerTokenMinter};
use ridegate_adapters::credential::ride_code::{CodeMinter, DeviceCodeMinter, SigningAlg, SigningKey};
use ridegate_adapters::ids::random_bytes;
use ridegate_core::clock::Clock;

use super::Failure;

/// `ridegate keys …`
#[derive(Debug, clap::Subcommand)]
pub(super) enum KeysCommand {
    /// Generate an issuer key pair: `<out>/<kid>.key.pem` (private, mode 0600) and
    /// `<out>/<kid>.jwks.json` (public, for `issuers.<id>.jwks_file`).
    Generate {
        /// The key id (unique across all issuers).
        #[arg(long)]
        kid: String,
        /// Signature algorithm.
        #[arg(long, value_parser = parse_alg, default_value = "EdDSA")]
        alg: SigningAlg,
        /// Directory to write the two files to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Mint signed ride codes, one QR text a line.
    Mint {
        /// The issuer id the codes claim (`iss`).
        #[arg(long)]
        issuer: String,
        /// The issuer's private key (PKCS#8 PEM from `keys generate`).
        #[arg(long)]
        key: PathBuf,
        /// The key id; defaults to the key file's name without `.key.pem`.
        #[arg(long)]
        kid: Option<String>,
        /// The ride account the codes are for.
        #[arg(long)]
        account: String,
        /// How long each code is valid.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        lifetime: Duration,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Mint the offline form: a fresh device key, certified by the issuer, signs
        /// the codes.
        #[arg(long)]
        device: bool,
        /// Device-certificate lifetime (with `--device`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1day")]
        certificate_lifetime: Duration,
    },
    /// Make a test CA, ridegate's server certificate, and gate and caller client
    /// certificates for TLS and mutual TLS.
    #[command(subcommand)]
    Cert(super::cert::CertCommand),
    /// Mint a caller token (bearer JWT) for the Links and HealthFeed services, signed
    /// with a caller key (`keys generate` makes one; configure its JWKS in [callers]).
    Token {
        /// The caller's kind.
        #[arg(long, value_parser = parse_kind)]
        kind: CallerKind,
        /// The caller's id (`sub`), e.g. `alipay-backend`, `window-S0107-02`.
        #[arg(long)]
        sub: String,
        /// For apps: the ride-code issuer the app speaks for.
        #[arg(long)]
        issuer: Option<String>,
        /// The caller key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The key id; defaults to the key file's name without `.key.pem`.
        #[arg(long)]
        kid: Option<String>,
        /// How long the token is valid.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        lifetime: Duration,
    },
}

fn parse_kind(s: &str) -> Result<CallerKind, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|_| "expected app, upgrade_service, ticket_window, back_end or health_platform".into())
}

/// Reads a PKCS#8 PEM key, taking the key id from `kid` or the file name.
fn read_key(path: &std::path::Path, kid: Option<String>) -> Result<SigningKey, Failure> {
    let kid = match kid {
        Some(kid) => kid,
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".pem").trim_end_matches(".key").to_owned())
            .ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "--kid is required when the key file name does not give it"
                ))
            })?,
    };
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::usage)?;
    SigningKey::from_pkcs8_pem(&pem, kid).map_err(|e| Failure::usage(anyhow::anyhow!("--key: {e}")))
}

fn parse_alg(s: &str) -> Result<SigningAlg, String> {
    match s {
        "ES256" | "es256" => Ok(SigningAlg::Es256),
        "EdDSA" | "eddsa" | "ed25519" => Ok(SigningAlg::EdDsa),
        _ => Err("expected ES256 or EdDSA".into()),
    }
}

/// A random `jti`: 96 bits, base64url.
pub(super) fn random_jti() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<12>())
}

/// Runs `ridegate keys …`.
pub(super) fn run(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Generate { kid, alg, out } => generate(&kid, alg, &out).map_err(Failure::runtime),
        KeysCommand::Cert(command) => super::cert::run(command),
        KeysCommand::Token {
            kind,
            sub,
            issuer,
            key,
            kid,
            lifetime,
        } => {
            if (kind == CallerKind::App) != issuer.is_some() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--issuer is required for app tokens and only for them"
                )));
            }
            let minter = CallerTokenMinter::new(read_key(&key, kid)?);
            let token = minter
                .token(kind, &sub, issuer.as_deref(), Clock::System.now(), lifetime)
                .map_err(Failure::runtime)?;
            println!("{token}");
            Ok(())
        }
        KeysCommand::Mint {
            issuer,
            key,
            kid,
            account,
            lifetime,
            count,
            device,
            certificate_lifetime,
        } => {
            let minter = CodeMinter::new(issuer, read_key(&key, kid)?);
            let now = Clock::System.now();
            let phone = if device {
                let device_key = SigningKey::generate(SigningAlg::EdDsa, "device").map_err(Failure::runtime)?;
                let cert = minter
                    .device_certificate(&account, &random_jti(), &device_key, now, certificate_lifetime)
                    .map_err(Failure::runtime)?;
                Some(DeviceCodeMinter::new(cert, device_key))
            } else {
                None
            };
            for _ in 0..count {
                let jti = random_jti();
                let code = match &phone {
                    Some(phone) => phone.code(&jti, now, lifetime),
                    None => minter.code(&account, &jti, now, lifetime),
                }
                .map_err(Failure::runtime)?;
                println!("{code}");
            }
            Ok(())
        }
    }
}

fn generate(kid: &str, alg: SigningAlg, out: &std::path::Path) -> anyhow::Result<()> {
    let key = SigningKey::generate(alg, kid)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let private = out.join(format!("{kid}.key.pem"));
    write_private(&private, &key.to_pkcs8_pem())?;
    let public = out.join(format!("{kid}.jwks.json"));
    let jwks = serde_json::json!({ "keys": [key.public_jwk()?] });
    std::fs::write(&public, serde_json::to_string_pretty(&jwks)?)
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!("private key: {}\npublic JWKS: {}", private.display(), public.display());
    Ok(())
}

pub(super) fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
