//! What each fuzz target checks, as plain functions: the targets in `fuzz_targets/`
//! call them with libFuzzer's input, and `make-corpus` mints the seed corpus with the
//! same fixed keys and clock, so seeds verify and the fuzzer starts deep.
//!
//! The property in every target: no input panics, and whatever is accepted satisfies
//! the invariants the decision relies on.

use std::sync::OnceLock;
use std::time::Duration;

use prost::Message as _;
use ridegate_adapters::credential::ride_code::{
    CodeMinter, DeviceCodeMinter, IssuerSettings, IssuerSpec, RideCodeVerifier, SigningAlg, SigningKey, VerifierLimits,
};
use ridegate_core::model::UnixMillis;
use ridegate_proto::pb;

/// The verifier's clock in every run: seeds minted at this time stay valid forever.
pub const NOW: UnixMillis = UnixMillis(1_900_000_000_000);

/// An issuer-signed (EdDSA) issuer, and one (ES256) that certifies devices.
pub const ALIPAY_KEY: &str = include_str!("../keys/fz-alipay-1.key.pem");
/// The device-certifying issuer's key.
pub const YTX_KEY: &str = include_str!("../keys/fz-ytx-1.key.pem");
/// Phone keys.
pub const PHONE_KEYS: [(&str, &str); 2] = [
    ("fz-phone-ed", include_str!("../keys/fz-phone-ed.key.pem")),
    ("fz-phone-es", include_str!("../keys/fz-phone-es.key.pem")),
];

fn key(pem: &str, kid: &str) -> SigningKey {
    SigningKey::from_pkcs8_pem(pem, kid).expect("the fuzz keys are valid PKCS#8")
}

/// The issuers' minters.
pub fn minters() -> (CodeMinter, CodeMinter) {
    (
        CodeMinter::new("alipay", key(ALIPAY_KEY, "fz-alipay-1")),
        CodeMinter::new("yitongxing", key(YTX_KEY, "fz-ytx-1")),
    )
}

/// A phone of the device-certifying issuer, with a certificate valid at [`NOW`].
pub fn phone(index: usize, cert_id: &str) -> DeviceCodeMinter {
    let (kid, pem) = PHONE_KEYS[index % PHONE_KEYS.len()];
    let phone_key = key(pem, kid);
    let (_, ytx) = minters();
    let cert = ytx
        .device_certificate("ytx-account-9", cert_id, &phone_key, NOW, Duration::from_secs(86_400))
        .expect("mint a certificate");
    DeviceCodeMinter::new(cert, phone_key)
}

fn spec(id: &str, algorithms: Vec<SigningAlg>, key: &SigningKey, devices: bool) -> IssuerSpec {
    IssuerSpec {
        id: id.into(),
        name: id.into(),
        keys: vec![key.public_jwk().expect("public JWK")],
        settings: IssuerSettings {
            algorithms,
            max_lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(5),
            device_certificates: devices,
            max_certificate_lifetime: Duration::from_secs(30 * 86_400),
            revoked_certificates: vec!["revoked-cert".into()],
        },
    }
}

/// The verifier every ride-code target checks against, built once per process.
pub fn verifier() -> &'static RideCodeVerifier {
    static VERIFIER: OnceLock<RideCodeVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        RideCodeVerifier::new(
            &[
                spec("alipay", vec![SigningAlg::EdDsa], &key(ALIPAY_KEY, "fz-alipay-1"), false),
                spec(
                    "yitongxing",
                    vec![SigningAlg::Es256, SigningAlg::EdDsa],
                    &key(YTX_KEY, "fz-ytx-1"),
                    true,
                ),
            ],
            VerifierLimits::default(),
        )
        .expect("the fuzz issuers are valid")
    })
}

/// Ride-code text, whole: parser, both forms, claims, times.
pub fn ride_code(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = verifier().verify(text, NOW) {
        assert!(!code.jti.is_empty() && code.jti.len() <= 128, "jti bounds");
        assert!(!code.account.is_empty() && code.account.len() <= 128, "account bounds");
        assert!(code.valid_until > NOW, "an accepted code is not expired");
        assert_eq!(code.certificate.is_some(), code.device_key.is_some(), "device form is whole");
    }
}

/// A device-signed code whose certificate is the fuzzer's input: the code after `~`
/// is a valid phone signature, so every path through certificate checks is reachable.
pub fn device_certificate(data: &[u8]) {
    static CODE: OnceLock<String> = OnceLock::new();
    let code = CODE.get_or_init(|| {
        let full = phone(0, "cert-fuzz").code("j-fuzz", NOW, Duration::from_secs(30)).expect("mint");
        full.split_once('~').map(|(_, code)| code.to_owned()).unwrap_or_default()
    });
    let Ok(certificate) = std::str::from_utf8(data) else {
        return;
    };
    if certificate.contains('~') {
        return;
    }
    if let Ok(verified) = verifier().verify(&format!("{certificate}~{code}"), NOW) {
        assert_eq!(&*verified.issuer, "yitongxing", "only the certifying issuer certifies");
        assert!(verified.device_key.is_some());
    }
}

/// Bytes off the wire as `ridegate.v1.AuthorizeRequest`, then the edge conversion.
pub fn gate_request(data: &[u8]) {
    let Ok(request) = pb::AuthorizeRequest::decode(data) else {
        return;
    };
    if let Ok(tap) = ridegate::serve::convert::gate_request(request) {
        assert!(!tap.gate.gate_id.is_empty(), "a tap names its gate");
    }
}

/// Configuration text: parse, then validate.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ridegate::config::Config::from_toml(text) {
        let _ = config.validate();
    }
}
