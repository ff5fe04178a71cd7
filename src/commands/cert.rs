//! `rally-sidecar cert`: a local certificate authority and a server certificate signed by it.
//!
//! pyral speaks only HTTPS and trusts what `REQUESTS_CA_BUNDLE` names, so a user who points it at
//! the sidecar (or the simulator) needs a CA they can hand to the client and a server certificate
//! for `localhost`, `127.0.0.1` and `::1`. An existing CA in the directory is reused, so clients
//! that already trust it keep working when the server certificate is re-issued.
//!
//! Validity: the CA for 10 years; the server certificate for at most 825 days (Apple platforms
//! refuse TLS server certificates valid longer) and never beyond its CA; both start an hour in
//! the past, so a client whose clock runs a little behind still accepts them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths written by [`generate`].
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether an existing CA was reused.
    pub reused_ca: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("--days must be between 1 and {MAX_SERVER_DAYS}, not {0}")]
    Days(u32),
}

const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The longest a server certificate is made for (and the default).
pub const MAX_SERVER_DAYS: u32 = 825;
/// How long a new CA is valid.
pub const CA_DAYS: u32 = 3650;
/// How far in the past validity starts (clock skew between the issuer and its clients).
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Creates (or reuses) `ca.pem`/`ca-key.pem` in `dir` and writes a fresh `cert.pem`/`key.pem`
/// valid for localhost, 127.0.0.1, ::1 and `extra_sans`, for [`MAX_SERVER_DAYS`]. Private keys
/// are written mode 0600.
pub fn generate(dir: &Path, extra_sans: &[String]) -> Result<CertPaths, CertError> {
    generate_for(dir, extra_sans, MAX_SERVER_DAYS)
}

/// [`generate`] with a server certificate valid for `days` (1 to [`MAX_SERVER_DAYS`]).
pub fn generate_for(dir: &Path, extra_sans: &[String], days: u32) -> Result<CertPaths, CertError> {
    if days == 0 || days > MAX_SERVER_DAYS {
        return Err(CertError::Days(days));
    }
    let now = time::OffsetDateTime::now_utc();
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");

    let existing = match (
        fs::read_to_string(&ca_cert_path),
        fs::read_to_string(&ca_key_path),
    ) {
        (Ok(cert), Ok(key)) => KeyPair::from_pem(&key).ok().map(|kp| (cert, kp)),
        _ => None,
    };
    let reused_ca = existing.is_some();
    let (ca_pem, ca_key) = match existing {
        Some(pair) => pair,
        None => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "rally-sidecar local CA");
            dn.push(DnType::OrganizationName, "rally-sidecar");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.not_before = now - BACKDATE;
            params.not_after = now + time::Duration::days(CA_DAYS.into());
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key)?;
            let pem = cert.pem();
            write_file(&ca_cert_path, pem.as_bytes(), false)?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
            (pem, key)
        }
    };
    // A server certificate outliving its CA would fail the day the CA expires.
    let ca_until = validity(&ca_pem).map_or(now + time::Duration::days(CA_DAYS.into()), |v| v.1);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for san in extra_sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let mut params = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "rally-sidecar");
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE;
    params.not_after = (now + time::Duration::days(days.into())).min(ca_until);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(CertPaths {
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        cert: cert_path,
        key: key_path,
        reused_ca,
    })
}

/// (not before, not after) of a PEM certificate.
pub fn validity(pem: &str) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    #[cfg(unix)]
    if private {
        // An existing file keeps its old mode on open; tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// `rally-sidecar cert`: writes the files and says how to trust them.
pub fn cli(out: &Path, sans: &[String], days: u32) -> u8 {
    match generate_for(out, sans, days) {
        Ok(paths) => {
            println!(
                "{} {}\nserver certificate: {}\nprivate key:        {}\ntrust it with:      REQUESTS_CA_BUNDLE={} (pyral), NODE_EXTRA_CA_CERTS={} (Node)",
                if paths.reused_ca {
                    "reused CA:"
                } else {
                    "created CA:"
                },
                paths.ca_cert.display(),
                paths.cert.display(),
                paths.key.display(),
                paths.ca_cert.display(),
                paths.ca_cert.display(),
            );
            0
        }
        Err(e @ CertError::Days(_)) => {
            eprintln!("rally-sidecar cert: {e}");
            super::EX_USAGE
        }
        Err(e) => {
            eprintln!("rally-sidecar cert: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_and_ca_is_reused() {
        let dir = std::env::temp_dir().join(format!("rs-cert-{}", uuid::Uuid::new_v4()));
        let first = generate(&dir, &["sidecar.internal".into()]).expect("generate");
        assert!(!first.reused_ca);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = fs::metadata(&first.ca_key)
                .expect("ca key")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        let ca_before = fs::read_to_string(&first.ca_cert).expect("ca");
        let validity =
            |pem: &Path| validity(&fs::read_to_string(pem).expect("pem")).expect("parse");
        let now = time::OffsetDateTime::now_utc();
        let (from, until) = validity(&first.cert);
        assert!(from < now - time::Duration::minutes(30) && from > now - time::Duration::hours(2));
        let days = (until - from).whole_days();
        assert!(
            (825..=826).contains(&days),
            "server certificate for {days} days"
        );
        let (from, until) = validity(&first.ca_cert);
        assert!(from < now);
        assert!((until - now).whole_days() >= 3649, "the CA for 10 years");
        assert!(matches!(
            generate_for(&dir, &[], 826),
            Err(CertError::Days(826))
        ));
        let short = generate_for(&dir, &[], 30).expect("30 days");
        let (from, until) = validity(&short.cert);
        assert_eq!((until - from).whole_days(), 30, "--days chooses less");
        let second = generate(&dir, &[]).expect("again");
        assert!(second.reused_ca);
        assert_eq!(ca_before, fs::read_to_string(&second.ca_cert).expect("ca"));
        let _ = fs::remove_dir_all(&dir);
    }
}
