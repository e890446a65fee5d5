//! Test certificates made with rcgen: CAs and client certificates, valid or not.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Serial numbers of test certificates: unique in the process, so a CRL can name one.
static SERIAL: AtomicU64 = AtomicU64::new(1000);

/// A certificate authority that can sign client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A client certificate for `name`, valid from `from` to `to` (years).
    pub fn client(&self, name: &str, from: i32, to: i32) -> ClientCert {
        self.host(&[name], from, to)
    }

    /// A certificate for a host with several names (the first is the CN), usable as server and
    /// client certificate.
    pub fn host(&self, names: &[&str], from: i32, to: i32) -> ClientCert {
        let name = names[0];
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    /// A PEM CRL signed by this CA revoking `revoked` (none: a valid, empty CRL).
    pub fn crl(&self, revoked: &[&ClientCert]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: date_time_ymd(2024, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }
}

/// A self-signed client certificate (no CA at all).
pub fn self_signed(name: &str) -> ClientCert {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: 0,
    }
}

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number (0: self-signed, not chosen).
    pub serial: u64,
}

impl ClientCert {
    /// Write `NAME.pem` and `NAME-key.pem` into `dir` (for openssl and swaks).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}
