//! Certificates, keys and the JWT secret: loading, first-start generation, fingerprints.
//!
//! When neither the certificate nor the key exists, a self-signed ECDSA P-256 pair for
//! localhost, 127.0.0.1 and ::1 is generated (the key file 0600), valid for
//! [`GENERATED_VALIDITY_DAYS`]; one without the other is refused, never overwritten. A
//! generated certificate (recognised by its subject) is generated again at start once it
//! has expired; any other certificate is never touched. The rustls configuration is
//! built here and rebuilt on SIGHUP; connections keep the configuration they started
//! with.

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

/// Days a generated certificate is valid: browsers refuse a server certificate valid
/// for longer than 398 days, and a development certificate should expire like a real
/// one rather than live for ever.
pub const GENERATED_VALIDITY_DAYS: i64 = 397;

/// How long before its expiry the certificate in use is warned about at start.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The subject common name of the certificates chatd generates: how chatd knows, at a
/// later start, that a certificate is its own and may be replaced once expired.
pub const GENERATED_COMMON_NAME: &str = "chatd self-signed development certificate";

/// What `ensure_certificate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateSetup {
    /// Both files existed and were kept.
    Existing,
    /// Neither file existed: a pair was generated.
    Generated,
    /// The certificate was one chatd generated and had expired at `expired_at` (Unix
    /// seconds): a new pair replaced it.
    Regenerated { expired_at: i64 },
}

/// What chatd reads from the certificate in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateFacts {
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Self-signed with chatd's own subject: a certificate chatd generated.
    pub generated: bool,
}

/// The validity and origin of a DER certificate.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError(format!("cannot parse the certificate: {e}")))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    Ok(CertificateFacts {
        not_after: cert.validity().not_after.timestamp(),
        generated: common_name == Some(GENERATED_COMMON_NAME)
            && cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}

/// The facts of the first certificate in a PEM file.
fn certificate_file_facts(cert_file: &Path) -> Result<CertificateFacts, TlsError> {
    let leaf = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", cert_file.display())))?
        .next()
        .ok_or_else(|| TlsError(format!("{} holds no certificate", cert_file.display())))?
        .map_err(|e| TlsError(format!("cannot read {}: {e}", cert_file.display())))?;
    certificate_facts(&leaf)
}

/// A new self-signed ECDSA P-256 certificate (PEM) for localhost, 127.0.0.1 and ::1,
/// valid from an hour before `now_secs` (clocks differ a little) for
/// [`GENERATED_VALIDITY_DAYS`], and its key (PKCS#8 PEM).
pub fn generate_pair(now_secs: i64) -> Result<(String, String), TlsError> {
    let fail = |e: &dyn std::fmt::Display| TlsError(format!("cannot generate a certificate: {e}"));
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| fail(&e));
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(&e))?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, GENERATED_COMMON_NAME);
    params.distinguished_name = subject;
    params.not_before = at(now_secs - 3600)?;
    params.not_after = at(now_secs + GENERATED_VALIDITY_DAYS * 86_400)?;
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes sure a certificate and key exist. When neither file exists a pair is
/// generated. Exactly one of them present is an error: generating a pair would
/// overwrite a file someone put there (a real key, or a certificate for it). A
/// certificate chatd generated that has expired at `now_secs` is replaced by a new
/// pair; any other certificate, expired or not, is left as it is.
pub fn ensure_certificate(
    cert_file: &Path,
    key_file: &Path,
    now_secs: i64,
) -> Result<CertificateSetup, TlsError> {
    match (exists(cert_file)?, exists(key_file)?) {
        (true, true) => {
            // A certificate that cannot be read is reported by the loading that follows.
            return match certificate_file_facts(cert_file) {
                Ok(facts) if facts.generated && facts.not_after <= now_secs => {
                    replace_pair(cert_file, key_file, now_secs)?;
                    Ok(CertificateSetup::Regenerated {
                        expired_at: facts.not_after,
                    })
                }
                _ => Ok(CertificateSetup::Existing),
            };
        }
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
    let (cert_pem, key_pem) = generate_pair(now_secs)?;
    write_new_file(key_file, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new_file(cert_file, cert_pem.as_bytes(), 0o644) {
        // A key without its certificate would stop every later start.
        let _ = std::fs::remove_file(key_file);
        return Err(e);
    }
    Ok(CertificateSetup::Generated)
}

/// Replaces an expired generated pair: the new files are written beside the old ones
/// (new files, exact modes) and renamed over them, key first, so that no moment leaves
/// a key without a certificate.
fn replace_pair(cert_file: &Path, key_file: &Path, now_secs: i64) -> Result<(), TlsError> {
    let (cert_pem, key_pem) = generate_pair(now_secs)?;
    let staged = |path: &Path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".new");
        std::path::PathBuf::from(name)
    };
    let (cert_new, key_new) = (staged(cert_file), staged(key_file));
    // Left over from a start that stopped half-way: ours to remove.
    let _ = std::fs::remove_file(&cert_new);
    let _ = std::fs::remove_file(&key_new);
    write_new_file(&key_new, key_pem.as_bytes(), 0o600)?;
    write_new_file(&cert_new, cert_pem.as_bytes(), 0o644)?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .map_err(|e| TlsError(format!("cannot replace {}: {e}", to.display())))
    };
    rename(&key_new, key_file)?;
    rename(&cert_new, cert_file)
}

/// Logs when the certificate in `cert_file` expires (a warning when soon or past).
pub fn log_expiry(cert_file: &Path, now_secs: i64) {
    match certificate_file_facts(cert_file) {
        Ok(facts) => {
            let (level, text) = expiry_notice(cert_file, facts, now_secs);
            log::log!(level, "{text}");
        }
        Err(e) => log::warn!("cannot tell when the certificate expires: {e}"),
    }
}

/// What to say at start about the certificate's expiry: a warning once it is within
/// [`EXPIRY_WARNING_DAYS`] of it or past it, otherwise the date for information.
pub fn expiry_notice(
    cert_file: &Path,
    facts: CertificateFacts,
    now_secs: i64,
) -> (log::Level, String) {
    let date = crate::http::response::http_date(facts.not_after);
    let days_left = (facts.not_after - now_secs).div_euclid(86_400);
    let file = cert_file.display();
    if facts.not_after <= now_secs {
        (
            log::Level::Warn,
            format!(
                "the certificate {file} expired on {date}: clients refuse it; renew it and \
                 send SIGHUP"
            ),
        )
    } else if days_left < EXPIRY_WARNING_DAYS {
        let renewal = if facts.generated {
            "chatd generates a new one at the first start after that"
        } else {
            "renew it and send SIGHUP"
        };
        (
            log::Level::Warn,
            format!("the certificate {file} expires on {date}, in {days_left} days: {renewal}"),
        )
    } else {
        (
            log::Level::Info,
            format!("the certificate {file} is valid until {date} ({days_left} days)"),
        )
    }
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
/// Trust anchors from PEM certificates (for the database's verify-full TLS).
pub fn root_store(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(roots)
}

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

    /// 2026-12-07T00:00:00Z.
    const NOW: i64 = 1_796_601_600;
    const DAY: i64 = 86_400;

    fn facts_of(cert_file: &Path) -> CertificateFacts {
        certificate_file_facts(cert_file).unwrap()
    }

    #[test]
    fn a_generated_certificate_lives_397_days_and_is_known_as_chatd_s() {
        let (cert_pem, _) = generate_pair(NOW).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), NOW - 3600);
        assert_eq!(cert.validity().not_after.timestamp(), NOW + 397 * DAY);
        let total = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(total < 398 * DAY, "browsers refuse more than 398 days");
        assert_eq!(
            certificate_facts(&der).unwrap(),
            CertificateFacts {
                not_after: NOW + 397 * DAY,
                generated: true
            }
        );
        // A self-signed certificate from elsewhere (rcgen's own subject) is not ours.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        assert!(!certificate_facts(other.cert.der()).unwrap().generated);
        assert!(certificate_facts(b"not a certificate").is_err());
    }

    #[test]
    fn an_expired_generated_certificate_is_replaced_and_others_are_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let long_ago = NOW - 400 * DAY;
        ensure_certificate(&cert, &key, long_ago).unwrap();
        let old_cert = std::fs::read(&cert).unwrap();
        // Still valid on its last day: kept.
        let last_second = long_ago + 397 * DAY - 1;
        assert_eq!(
            ensure_certificate(&cert, &key, last_second).unwrap(),
            CertificateSetup::Existing
        );
        assert_eq!(std::fs::read(&cert).unwrap(), old_cert);
        // Expired: a new pair, valid from now, loadable, with the key still 0600.
        assert_eq!(
            ensure_certificate(&cert, &key, NOW).unwrap(),
            CertificateSetup::Regenerated {
                expired_at: long_ago + 397 * DAY
            }
        );
        assert_ne!(std::fs::read(&cert).unwrap(), old_cert);
        assert_eq!(facts_of(&cert).not_after, NOW + 397 * DAY);
        assert_eq!(exposed_mode(&key).unwrap(), None);
        assert!(
            load_server_config(&cert, &key).is_ok(),
            "the new pair matches"
        );
        assert!(!dir.path().join("cert.pem.new").exists());

        // Someone else's expired certificate stays as it is.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW - DAY).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let other = params.self_signed(&other_key).unwrap();
        std::fs::write(&cert, other.pem()).unwrap();
        std::fs::write(&key, other_key.serialize_pem()).unwrap();
        assert_eq!(
            ensure_certificate(&cert, &key, NOW).unwrap(),
            CertificateSetup::Existing
        );
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), other.pem());
        // An unreadable certificate is left for the loading to report.
        std::fs::write(&cert, "garbage").unwrap();
        assert_eq!(
            ensure_certificate(&cert, &key, NOW).unwrap(),
            CertificateSetup::Existing
        );
    }

    #[test]
    fn expiry_is_told_and_warned_about_30_days_ahead() {
        let file = Path::new("cert.pem");
        let facts = |days: i64, generated| CertificateFacts {
            not_after: NOW + days * DAY,
            generated,
        };
        let (level, text) = expiry_notice(file, facts(397, true), NOW);
        assert_eq!(level, log::Level::Info);
        assert_eq!(
            text,
            "the certificate cert.pem is valid until Sat, 08 Jan 2028 00:00:00 GMT (397 days)"
        );
        assert_eq!(
            expiry_notice(file, facts(30, true), NOW).0,
            log::Level::Info
        );
        let (level, text) = expiry_notice(file, facts(29, true), NOW);
        assert_eq!(level, log::Level::Warn);
        assert!(
            text.contains("in 29 days: chatd generates a new one"),
            "{text}"
        );
        let (level, text) = expiry_notice(file, facts(29, false), NOW);
        assert_eq!(level, log::Level::Warn);
        assert!(text.contains("renew it and send SIGHUP"), "{text}");
        let (level, text) = expiry_notice(file, facts(0, false), NOW);
        assert_eq!(level, log::Level::Warn);
        assert!(text.contains("expired on"), "{text}");
    }

    #[test]
    fn generates_loads_and_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c/cert.pem");
        let key = dir.path().join("c/key.pem");
        assert_eq!(
            ensure_certificate(&cert, &key, NOW).unwrap(),
            CertificateSetup::Generated
        );
        assert_eq!(
            ensure_certificate(&cert, &key, NOW).unwrap(),
            CertificateSetup::Existing,
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
        let e = ensure_certificate(&cert, &key, NOW).unwrap_err().0;
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
        let e = ensure_certificate(&cert, &key, NOW).unwrap_err().0;
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
        ensure_certificate(&c1, &k1, NOW).unwrap();
        ensure_certificate(&c2, &k2, NOW).unwrap();
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
