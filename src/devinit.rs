//! First-start generation of development files: a dev CA with an ECDSA P-256 server
//! certificate and a dev AMTP client identity, and the `dev` user with a random password.
//! Only when the configuration asks for it (`tls.generate_dev_certificate`,
//! `server.create_dev_user`) and only when the files do not exist yet — an operator's files
//! are never overwritten.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `data` to a new file with `mode`.
fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// Create the data directory (mode 0700: it holds the queue, keys and the admin socket).
pub fn data_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting permissions on {}", dir.display()))?;
    Ok(())
}

/// The dev AMTP client identity: certificate name = EHLO name (a private connection).
pub const DEV_CLIENT_NAME: &str = "dev-client.localhost";

/// Where the dev client certificate and key go, beside the server certificate.
pub fn dev_client_files(cert: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        cert.with_file_name("dev-client.pem"),
        cert.with_file_name("dev-client-key.pem"),
    )
}

/// Generate a dev CA, a server certificate for `hostname`, `localhost`, 127.0.0.1 and ::1 at
/// `cert`/`key`, and a client certificate for [`DEV_CLIENT_NAME`] (`dev-client.pem`,
/// `dev-client-key.pem`), unless all four exist. The CA certificate goes beside them as
/// `ca.pem` so clients (swaks `--tls-ca-path`, `probe --ca`, tests) can verify the server, and
/// the dev configuration trusts it as a private AMTP CA. The CA key is not kept: when a file
/// is missing, all are made anew with a new CA.
pub fn certificate(hostname: &str, cert: &Path, key: &Path) -> Result<bool> {
    let (client_cert, client_key) = dev_client_files(cert);
    if cert.exists() && key.exists() && client_cert.exists() && client_key.exists() {
        return Ok(false);
    }
    let ca_key = KeyPair::generate().context("generating CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "amtp-relay development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the dev CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("generating server key")?;
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, hostname);
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    params
        .subject_alt_names
        .push(SanType::IpAddress("::1".parse()?));
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;

    let client_key_pair = KeyPair::generate().context("generating the dev client key")?;
    let mut params = CertificateParams::new(vec![DEV_CLIENT_NAME.to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, DEV_CLIENT_NAME);
    let client = params
        .signed_by(&client_key_pair, &issuer)
        .context("signing the dev client certificate")?;

    for p in [cert, key, &client_cert, &client_key] {
        let _ = fs::remove_file(p);
    }
    write_private(key, server_key.serialize_pem().as_bytes(), 0o600)?;
    write_private(cert, server_cert.pem().as_bytes(), 0o644)?;
    write_private(
        &client_key,
        client_key_pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_private(&client_cert, client.pem().as_bytes(), 0o644)?;
    let ca_path = cert.with_file_name("ca.pem");
    let _ = fs::remove_file(&ca_path);
    write_private(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// A random password: 24 characters from an unambiguous alphabet.
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random number generator: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// Ensure user `dev` exists: the password in `password_file` (0600), the entry in
/// `users_file`. Returns the password file path when something was created.
pub fn dev_user(password_file: &Path, users_file: &Path) -> Result<bool> {
    let mut created = false;
    if !password_file.exists() {
        write_private(
            password_file,
            format!("{}\n", random_password()?).as_bytes(),
            0o600,
        )?;
        let _ = fs::remove_file(users_file);
        created = true;
    }
    if !users_file.exists() {
        let password = fs::read_to_string(password_file)
            .with_context(|| format!("reading {}", password_file.display()))?;
        let entry = amtp_actors::auth::users::users_file_entry("dev", password.trim(), true);
        write_private(
            users_file,
            format!("# Generated by amtp-relay for the embedded dev configuration.\n{entry}")
                .as_bytes(),
            0o600,
        )?;
        created = true;
    }
    Ok(created)
}
