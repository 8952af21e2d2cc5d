//! TLS and mutual TLS on the gate port, through rustls with the aws-lc-rs provider.
//!
//! Handshakes run in each connection's own task (a slow or hostile client never holds
//! up the next one), each bounded by `server.handshake_timeout` (see `transport`). The
//! server certificate, its key and the client CA live in one `rustls::ServerConfig`
//! behind an [`ArcSwap`]: a reload builds a new one and swaps it in for the next
//! handshake, so connections already open keep theirs, and a reload that fails
//! validation keeps the old one.
//!
//! A client certificate is read once per connection: the gate id its SAN URI
//! `spiffe://<trust_domain>/gate/<gate_id>` names goes into [`Peer`], which the
//! transport hands to every request on the connection as an extension.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientCertificates, TlsConfig};

/// Longest gate id a certificate may name, in bytes (as a request's `gate.gate_id`).
const MAX_GATE_ID: usize = 64;

/// Why a TLS configuration could not be loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("server.tls.{field}: cannot read {path}: {source}")]
    Read {
        /// The setting that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("server.tls.{field}: {path} holds no {what}")]
    Empty {
        /// The setting that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A PEM file is malformed.
    #[error("server.tls.{field}: {path} is not valid PEM: {problem}")]
    Pem {
        /// The setting that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls' description.
        problem: String,
    },
    /// rustls refused the certificate, key or CA (a key that does not match, say).
    #[error("server.tls: {0}")]
    Rustls(String),
}

/// The connection a request came on: whether its client presented a certificate, and
/// which gate, if any, that certificate names. Plaintext and TLS-without-a-client-
/// certificate connections have neither.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client presented a certificate that chains to the client CA.
    pub certified: bool,
    /// The gate its certificate names.
    pub gate: Option<Arc<str>>,
}

/// The gate a client certificate names: its one SAN URI
/// `spiffe://<trust_domain>/gate/<gate_id>`. None when it names none, or several.
pub fn certified_gate(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{trust_domain}/gate/");
    let mut gates = sans.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(&prefix),
        _ => None,
    });
    let gate = gates.next()?;
    let valid = !gate.is_empty() && gate.len() <= MAX_GATE_ID && !gate.contains('/');
    (valid && gates.next().is_none()).then(|| Arc::from(gate))
}

/// The live TLS configuration of the gate port, reloadable.
pub struct TlsState {
    settings: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// The files' modification times when last loaded, to notice a change.
    loaded: parking_lot::Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("mutual", &self.settings.mutual())
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files `settings` names; an error names the file and what is wrong.
    pub fn load(settings: &TlsConfig) -> Result<Self, TlsError> {
        let stamps = stamps(settings);
        let config = build(settings)?;
        Ok(Self {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
            loaded: parking_lot::Mutex::new(stamps),
        })
    }

    /// Reloads every file. On failure the configuration in use stays as it was; the
    /// files are not tried again until they change (or the next SIGHUP), so a broken
    /// file is reported once, not at every check.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.loaded.lock() = stamps(&self.settings);
        let config = build(&self.settings)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Whether any file changed since it was last loaded (by modification time).
    pub fn changed(&self) -> bool {
        *self.loaded.lock() != stamps(&self.settings)
    }

    /// The trust domain gate certificates name.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// Runs the TLS handshake on `tcp` with the configuration of the moment; returns
    /// the connection and the [`Peer`] its handshake proved. The caller bounds it in time.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(Conn, Peer)> {
        let stream = TlsAcceptor::from(self.current.load_full()).accept(tcp).await?;
        let peer = self.peer(&stream);
        Ok((Conn::Tls(Box::new(stream)), peer))
    }

    /// The connection's [`Peer`] from its handshake.
    fn peer(&self, stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Peer {
        let leaf = stream.get_ref().1.peer_certificates().and_then(|certs| certs.first());
        Peer {
            certified: leaf.is_some(),
            gate: leaf.and_then(|cert| certified_gate(cert, self.trust_domain())),
        }
    }
}

fn paths(settings: &TlsConfig) -> impl Iterator<Item = &Path> {
    [&settings.cert, &settings.key, &settings.client_ca]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
}

fn stamps(settings: &TlsConfig) -> Vec<Option<SystemTime>> {
    paths(settings)
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.into(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            field,
            path: path.into(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            field,
            path: path.into(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The aws-lc-rs provider every TLS link of ridegate uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A root store holding every certificate in `path`.
pub fn read_roots(field: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(field, path)? {
        roots.add(cert).map_err(|e| TlsError::Rustls(format!("{field}: {e}")))?;
    }
    Ok(roots)
}

/// A rustls server configuration from the files `settings` names.
fn build(settings: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Err(TlsError::Rustls("cert and key are both required".into()));
    };
    let chain = read_certificates("cert", cert)?;
    let key_pem = read("key", key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        field: "key",
        path: key.clone(),
        problem: e.to_string(),
    })?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(read_roots("client_ca", ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match settings.client_certificates {
                ClientCertificates::Required => verifier,
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("cert and key: {e}")))?;
    // gRPC only: HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One accepted connection: plaintext, or TLS.
pub enum Conn {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_names_one_gate_in_its_trust_domain_or_none() {
        let gate = cert_with(&["spiffe://ridegate/gate/L10-S07-G03"]);
        assert_eq!(certified_gate(&gate, "ridegate").as_deref(), Some("L10-S07-G03"));
        assert_eq!(certified_gate(&gate, "other-city"), None, "another trust domain");
        for uris in [
            &["spiffe://ridegate/app/alipay"][..],
            &["spiffe://ridegate/gate/"],
            &["spiffe://ridegate/gate/G1/extra"],
            &["spiffe://ridegate/gate/G1", "spiffe://ridegate/gate/G2"],
            &[],
        ] {
            assert_eq!(certified_gate(&cert_with(uris), "ridegate"), None, "{uris:?}");
        }
        assert_eq!(certified_gate(&CertificateDer::from(vec![1, 2, 3]), "ridegate"), None);
    }
}
