//! A certificate authority for end-to-end tests: real X.509 certificates (rcgen, ECDSA
//! P-256) for ridegate's server, for gates (SAN URI `spiffe://ridegate/gate/<id>`) and
//! for other callers, valid, expired, or from a foreign CA.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The trust domain the fixtures' gate certificates name.
pub const TRUST_DOMAIN: &str = "ridegate";

/// The DNS name the server certificate carries, and clients verify.
pub const SERVER_NAME: &str = "localhost";

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

impl CertPair {
    /// As a TLS client identity.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }
}

/// A CA that issues certificates.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, from_now: i64, valid_for: Duration) {
    let start = time::OffsetDateTime::now_utc() + time::Duration::seconds(from_now);
    params.not_before = start;
    params.not_after = start + time::Duration::try_from(valid_for).expect("duration");
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, -60, Duration::from_secs(86_400));
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn issue(&self, name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose, from_now: i64) -> CertPair {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, from_now, Duration::from_secs(3600));
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        CertPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// ridegate's server certificate: `localhost`, 127.0.0.1 and ::1.
    pub fn server(&self) -> CertPair {
        let sans = vec![
            SanType::DnsName(SERVER_NAME.try_into().expect("name")),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        self.issue("ridegate", sans, ExtendedKeyUsagePurpose::ServerAuth, -60)
    }

    /// A server certificate for another name only.
    pub fn server_named(&self, dns: &str) -> CertPair {
        let sans = vec![SanType::DnsName(dns.try_into().expect("name"))];
        self.issue(dns, sans, ExtendedKeyUsagePurpose::ServerAuth, -60)
    }

    /// A gate's certificate, naming `gate_id`.
    pub fn gate(&self, gate_id: &str) -> CertPair {
        self.gate_from(gate_id, -60)
    }

    /// A gate's certificate that expired an hour ago.
    pub fn expired_gate(&self, gate_id: &str) -> CertPair {
        self.gate_from(gate_id, -7200)
    }

    fn gate_from(&self, gate_id: &str, from_now: i64) -> CertPair {
        let uri = format!("spiffe://{TRUST_DOMAIN}/gate/{gate_id}");
        let sans = vec![SanType::URI(uri.try_into().expect("uri"))];
        self.issue(gate_id, sans, ExtendedKeyUsagePurpose::ClientAuth, from_now)
    }

    /// A non-gate caller's certificate.
    pub fn caller(&self, name: &str) -> CertPair {
        let uri = format!("spiffe://{TRUST_DOMAIN}/caller/{name}");
        let sans = vec![SanType::URI(uri.try_into().expect("uri"))];
        self.issue(name, sans, ExtendedKeyUsagePurpose::ClientAuth, -60)
    }

    /// A client configuration trusting this CA, presenting `identity` if any.
    pub fn client(&self, identity: Option<&CertPair>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(SERVER_NAME);
        match identity {
            Some(pair) => config.identity(pair.identity()),
            None => config,
        }
    }
}
