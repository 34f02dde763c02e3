//! Certificates, keys and the JWT secret: loading, first-start generation, fingerprints.
//!
//! When neither the certificate nor the key exists, a self-signed ECDSA P-256 pair for
//! localhost, 127.0.0.1 and ::1 is generated (the key file 0600); one without the other
//! is refused, never overwritten. The rustls configuration is built here and rebuilt on
//! SIGHUP; connections keep the configuration they started with.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The shortest accepted JWT secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Loading or creating key material failed; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Writes `data` to a file that must not exist yet, with exactly `mode` whatever the
/// umask, creating the directory. Never truncating an existing file means key material
/// is never overwritten, and a file that existed keeps no mode of its own.
fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| TlsError(format!("cannot create {}: {e}", path.display())))?;
    // The umask may have taken bits away from `mode`: set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(data))
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists()
        .map_err(|e| TlsError(format!("cannot look at {}: {e}", path.display())))
}

/// Generates a self-signed certificate when neither file exists. Returns whether it
/// did. Exactly one of them present is an error: generating a pair would overwrite a
/// file someone put there (a real key, or a certificate for it).
pub fn ensure_certificate(cert_file: &Path, key_file: &Path) -> Result<bool, TlsError> {
    match (exists(cert_file)?, exists(key_file)?) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (cert_present, _) => {
            let (present, missing) = if cert_present {
                (("certificate", cert_file), ("key", key_file))
            } else {
                (("key", key_file), ("certificate", cert_file))
            };
            return Err(TlsError(format!(
                "the {} file {} exists but the {} file {} does not; refusing to generate a \
                 new pair over it: supply both files, or remove {} to have chatd generate both",
                present.0,
                present.1.display(),
                missing.0,
                missing.1.display(),
                present.1.display()
            )));
        }
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError(format!("cannot generate a certificate: {e}")))?;
    write_new_file(
        key_file,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    if let Err(e) = write_new_file(cert_file, certified.cert.pem().as_bytes(), 0o644) {
        // A key without its certificate would stop every later start.
        let _ = std::fs::remove_file(key_file);
        return Err(e);
    }
    Ok(true)
}

/// The mode of `path` if group or others have any access to it (`mode & 0o077 != 0`):
/// a private key or secret in such a file is open to other local users.
pub fn exposed_mode(path: &Path) -> Result<Option<u32>, TlsError> {
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsError(format!("cannot look at {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// The TLS configuration for the given files, and the certificate's SHA-256
/// fingerprint (colon-separated upper-case hex).
pub fn load_server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "cannot read certificates from {}: {e}",
                cert_file.display()
            ))
        })?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError(format!(
            "{} holds no certificate",
            cert_file.display()
        )));
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        TlsError(format!(
            "cannot read private key from {}: {e}",
            key_file.display()
        ))
    })?;
    let provider = Arc::new(provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS configuration: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not form a valid pair: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our order (AES-128-GCM with SHA-256 first), not the client's: every suite offered
    // is strong, and SHA-256 has hardware support where SHA-384 often does not, which
    // makes the handshake's key schedule measurably cheaper.
    config.ignore_client_order = true;
    // Resumption saves nothing with TLS 1.3 and P-256 (ECDHE runs anyway) while tickets
    // cost CPU and bytes on every handshake and a session cache costs memory.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok((Arc::new(config), fingerprint))
}

/// aws-lc-rs with its default suites and groups, AES-128-GCM suites moved first.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let name = format!("{:?}", suite.suite());
        match (name.contains("AES_128_GCM"), name.starts_with("TLS13")) {
            (true, true) => 0,
            (_, true) => 1,
            (true, false) => 2,
            (_, false) => 3,
        }
    });
    provider
}

/// SHA-256 of the DER certificate as `AB:CD:...`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where the JWT secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    ExistingFile,
    CreatedFile,
}

/// The JWT secret: `SECRET_KEY` if given (its UTF-8 bytes), else the secret file,
/// created with 48 random bytes (hex) if missing. Shorter than 32 bytes is an error.
pub fn load_secret(
    env_secret: Option<String>,
    secret_file: &Path,
) -> Result<(Vec<u8>, SecretSource), TlsError> {
    if let Some(secret) = env_secret {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TlsError(format!(
                "SECRET_KEY is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            )));
        }
        return Ok((secret.into_bytes(), SecretSource::Environment));
    }
    match std::fs::read(secret_file) {
        Ok(bytes) => {
            let secret = bytes.trim_ascii().to_vec();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(TlsError(format!(
                    "{} holds {} bytes; at least {MIN_SECRET_BYTES} are required",
                    secret_file.display(),
                    secret.len()
                )));
            }
            Ok((secret, SecretSource::ExistingFile))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 48];
            aws_lc_rs::rand::fill(&mut raw)
                .map_err(|_| TlsError("no randomness for the JWT secret".to_string()))?;
            let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_new_file(secret_file, secret.as_bytes(), 0o600)?;
            Ok((secret.into_bytes(), SecretSource::CreatedFile))
        }
        Err(e) => Err(TlsError(format!(
            "cannot read {}: {e}",
            secret_file.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_loads_and_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c/cert.pem");
        let key = dir.path().join("c/key.pem");
        assert!(ensure_certificate(&cert, &key).unwrap());
        assert!(
            !ensure_certificate(&cert, &key).unwrap(),
            "kept when present"
        );
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (config, fp) = load_server_config(&cert, &key).unwrap();
        let first = format!("{:?}", config.crypto_provider().cipher_suites[0].suite());
        assert_eq!(first, "TLS13_AES_128_GCM_SHA256");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.split(':').all(|h| h.len() == 2));
    }

    #[test]
    fn one_file_without_the_other_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        // A key on its own, readable by others: neither replaced nor re-moded.
        std::fs::write(&key, "my real key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ensure_certificate(&cert, &key).unwrap_err().0;
        assert!(
            e.contains(&cert.display().to_string()) && e.contains(&key.display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "my real key\n");
        assert_eq!(exposed_mode(&key).unwrap(), Some(0o644));
        assert!(!cert.exists());
        // A certificate on its own.
        std::fs::remove_file(&key).unwrap();
        std::fs::write(&cert, "my real certificate\n").unwrap();
        let e = ensure_certificate(&cert, &key).unwrap_err().0;
        assert!(e.contains("the certificate file"), "{e}");
        assert!(e.contains(&key.display().to_string()), "{e}");
        assert_eq!(
            std::fs::read_to_string(&cert).unwrap(),
            "my real certificate\n"
        );
        assert!(!key.exists());
    }

    #[test]
    fn new_files_get_exactly_their_mode_and_never_replace_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new_file(&path, b"one", 0o600).unwrap();
        assert_eq!(exposed_mode(&path).unwrap(), None);
        assert!(write_new_file(&path, b"two", 0o600).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(exposed_mode(&path).unwrap(), Some(0o640));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(exposed_mode(&path).unwrap(), Some(0o604));
    }

    #[test]
    fn mismatched_or_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("c1"), dir.path().join("k1"));
        let (c2, k2) = (dir.path().join("c2"), dir.path().join("k2"));
        ensure_certificate(&c1, &k1).unwrap();
        ensure_certificate(&c2, &k2).unwrap();
        assert!(load_server_config(&c1, &k2).is_err());
        assert!(load_server_config(&dir.path().join("none"), &k1).is_err());
        std::fs::write(dir.path().join("empty"), "").unwrap();
        assert!(load_server_config(&dir.path().join("empty"), &k1).is_err());
    }

    #[test]
    fn secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s/jwt.secret");
        assert!(load_secret(Some("short".into()), &file).is_err());
        let (s, src) = load_secret(Some("x".repeat(32)), &file).unwrap();
        assert_eq!((s.len(), src), (32, SecretSource::Environment));
        let (s1, src) = load_secret(None, &file).unwrap();
        assert_eq!(src, SecretSource::CreatedFile);
        assert_eq!(s1.len(), 96);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (s2, src) = load_secret(None, &file).unwrap();
        assert_eq!((s2, src), (s1, SecretSource::ExistingFile));
        std::fs::write(&file, "tooshort\n").unwrap();
        assert!(load_secret(None, &file).is_err());
    }
}
