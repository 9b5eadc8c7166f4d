//! Secure Boot signing keys: RSA-2048 (what every UEFI firmware verifies)
//! with a self-signed X.509 v3 certificate (sha256WithRSAEncryption).
//!
//! Files: `NAME.sb.key` (PKCS#8 PEM, mode 0600), `NAME.sb.crt` (PEM) and
//! `NAME.sb.der` (the certificate as DER, what firmware setup screens and
//! `virt-fw-vars` import).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use der::referenced::OwnedToRef;
use der::{Decode, DecodePem, Encode, EncodePem};
use pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::pkcs1v15::SigningKey;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// RSA modulus size: 2048 bits is what UEFI 2.x requires firmware to verify
/// (EFI_CERT_RSA2048); larger keys are not accepted everywhere.
pub const RSA_BITS: usize = 2048;

/// Why making, saving or loading a Secure Boot key failed.
#[derive(Debug, thiserror::Error)]
pub enum SbKeyError {
    #[error("cannot generate an RSA-{RSA_BITS} key: {0}")]
    Generate(String),
    #[error("invalid common name {cn:?}: {msg}")]
    CommonName { cn: String, msg: String },
    #[error("invalid validity of {years} years: {msg}")]
    Validity { years: u32, msg: String },
    #[error("cannot build the certificate: {0}")]
    Certificate(String),
    #[error("{} exists; a Secure Boot key is never overwritten", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not an RSA PKCS#8 private key: {msg}", path.display())]
    ParseKey { path: PathBuf, msg: String },
    #[error("{}: not an X.509 certificate (PEM or DER): {msg}", path.display())]
    ParseCert { path: PathBuf, msg: String },
    #[error("{}'s public key is not the one in {}", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: RSA-{bits} key; Secure Boot keys are RSA-{RSA_BITS}", path.display())]
    KeySize { path: PathBuf, bits: usize },
}

/// A Secure Boot signing key and its certificate.
#[derive(Clone)]
pub struct SbKey {
    key: RsaPrivateKey,
    cert: Certificate,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for SbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SbKey").field("subject", &self.subject()).finish_non_exhaustive()
    }
}

/// The three files of a key named NAME: `NAME.sb.key`, `NAME.sb.crt`, `NAME.sb.der`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbKeyPaths {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub der: PathBuf,
}

impl SbKeyPaths {
    pub fn for_name(name: &Path) -> Self {
        let with = |ext: &str| {
            let mut s = name.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        SbKeyPaths { key: with(".sb.key"), cert: with(".sb.crt"), der: with(".sb.der") }
    }
}

impl SbKey {
    /// A new RSA-2048 key and a self-signed certificate for `common_name`,
    /// valid from now for `years` years (365-day years).
    pub fn generate(common_name: &str, years: u32) -> Result<SbKey, SbKeyError> {
        let mut rng = rand_core::OsRng;
        let key = RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| SbKeyError::Generate(e.to_string()))?;
        let cert = self_signed(&key, common_name, years, &mut rng)?;
        SbKey::from_parts(key, cert)
    }

    fn from_parts(key: RsaPrivateKey, cert: Certificate) -> Result<SbKey, SbKeyError> {
        let cert_der = cert.to_der().map_err(|e| SbKeyError::Certificate(e.to_string()))?;
        Ok(SbKey { key, cert, cert_der })
    }

    /// Loads `key_path` (PKCS#8 PEM) and `cert_path` (PEM or DER) and
    /// checks that they belong together.
    pub fn load(key_path: &Path, cert_path: &Path) -> Result<SbKey, SbKeyError> {
        let pem = fs::read_to_string(key_path).map_err(|source| SbKeyError::Read { path: key_path.into(), source })?;
        let key = RsaPrivateKey::from_pkcs8_pem(&pem)
            .map_err(|e| SbKeyError::ParseKey { path: key_path.into(), msg: e.to_string() })?;
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if bits != RSA_BITS {
            return Err(SbKeyError::KeySize { path: key_path.into(), bits });
        }
        let raw = fs::read(cert_path).map_err(|source| SbKeyError::Read { path: cert_path.into(), source })?;
        let cert =
            if raw.starts_with(b"-----BEGIN") { Certificate::from_pem(&raw) } else { Certificate::from_der(&raw) }
                .map_err(|e| SbKeyError::ParseCert { path: cert_path.into(), msg: e.to_string() })?;
        let ours = RsaPublicKey::from(&key)
            .to_public_key_der()
            .map_err(|e| SbKeyError::ParseKey { path: key_path.into(), msg: e.to_string() })?;
        let theirs = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| SbKeyError::ParseCert { path: cert_path.into(), msg: e.to_string() })?;
        if ours.as_bytes() != theirs.as_slice() {
            return Err(SbKeyError::Mismatch { key: key_path.into(), cert: cert_path.into() });
        }
        SbKey::from_parts(key, cert)
    }

    /// Writes `NAME.sb.key` (0600), `NAME.sb.crt` and `NAME.sb.der`; refuses
    /// to overwrite any of them.
    pub fn save(&self, name: &Path) -> Result<SbKeyPaths, SbKeyError> {
        let paths = SbKeyPaths::for_name(name);
        for p in [&paths.key, &paths.cert, &paths.der] {
            if p.exists() {
                return Err(SbKeyError::Exists(p.clone()));
            }
        }
        let key_pem = self.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| SbKeyError::Generate(e.to_string()))?;
        write_new(&paths.key, key_pem.as_bytes(), 0o600)?;
        write_new(&paths.cert, self.cert_pem()?.as_bytes(), 0o644)?;
        write_new(&paths.der, &self.cert_der, 0o644)?;
        Ok(paths)
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> Result<String, SbKeyError> {
        self.cert.to_pem(LineEnding::LF).map_err(|e| SbKeyError::Certificate(e.to_string()))
    }

    /// The certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The subject, RFC 4514 (`CN=...`).
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// SHA-256 of the DER certificate, hex (what `openssl x509 -fingerprint
    /// -sha256` prints, without colons).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        Sha256::digest(&self.cert_der).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `notAfter` as RFC 3339-ish text (`YYYY-MM-DDTHH:MM:SSZ`).
    pub fn not_after(&self) -> String {
        self.cert.tbs_certificate.validity.not_after.to_string()
    }

    /// PKCS#1 v1.5 SHA-256 signature over `msg` (deterministic).
    pub(crate) fn sign_sha256(&self, msg: &[u8]) -> Vec<u8> {
        use rsa::signature::{SignatureEncoding, Signer};
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        signer.sign(msg).to_vec()
    }
}

fn self_signed(
    key: &RsaPrivateKey,
    common_name: &str,
    years: u32,
    rng: &mut rand_core::OsRng,
) -> Result<Certificate, SbKeyError> {
    use rand_core::RngCore;
    let cn_err = |msg: String| SbKeyError::CommonName { cn: common_name.into(), msg };
    if common_name.is_empty() || common_name.len() > 64 || common_name.chars().any(char::is_control) {
        return Err(cn_err("must be 1 to 64 characters, none of them control characters".into()));
    }
    // RFC 4514 escaping, so "ACME, Inc." is one common name.
    let mut escaped = String::with_capacity(common_name.len() + 4);
    for c in common_name.chars() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let subject = Name::from_str(&format!("CN={escaped}")).map_err(|e| cn_err(e.to_string()))?;
    if years == 0 || years > 100 {
        return Err(SbKeyError::Validity { years, msg: "must be 1 to 100".into() });
    }
    let validity = Validity::from_now(Duration::from_secs(u64::from(years) * 365 * 86_400))
        .map_err(|e| SbKeyError::Validity { years, msg: e.to_string() })?;
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let serial = SerialNumber::new(&serial).map_err(|e| SbKeyError::Certificate(e.to_string()))?;
    let spki = SubjectPublicKeyInfoOwned::from_key(RsaPublicKey::from(key))
        .map_err(|e| SbKeyError::Certificate(e.to_string()))?;
    let signer = SigningKey::<Sha256>::new(key.clone());
    let cert_err = |e: x509_cert::builder::Error| SbKeyError::Certificate(e.to_string());
    // Extensions as `openssl req -x509` writes them (subject key id,
    // CA:TRUE) plus a key usage that allows signing: OpenSSL's PKCS#7
    // verification (sbverify) refuses a signer whose key usage lacks
    // digitalSignature.
    let ski =
        SubjectKeyIdentifier::try_from(spki.owned_to_ref()).map_err(|e| SbKeyError::Certificate(e.to_string()))?;
    let mut builder =
        CertificateBuilder::new(Profile::Manual { issuer: None }, serial, validity, subject, spki, &signer)
            .map_err(cert_err)?;
    builder.add_extension(&ski).map_err(cert_err)?;
    builder.add_extension(&BasicConstraints { ca: true, path_len_constraint: None }).map_err(cert_err)?;
    builder.add_extension(&KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign)).map_err(cert_err)?;
    builder.build::<rsa::pkcs1v15::Signature>().map_err(|e| SbKeyError::Certificate(e.to_string()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SbKeyError> {
    let err = |source| SbKeyError::Write { path: path.into(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}
