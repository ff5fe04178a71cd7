//! `rally-sidecar cert`: a local certificate authority and a server certificate signed by it.
//!
//! pyral speaks only HTTPS and trusts what `REQUESTS_CA_BUNDLE` names, so a user who points it at
//! the sidecar (or the simulator) needs a CA they can hand to the client and a server certificate
//! for `localhost`, `127.0.0.1` and `::1`. An existing CA in the directory is reused, so clients
//! that already trust it keep working when the server certificate is re-issued.

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
}

const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Creates (or reuses) `ca.pem`/`ca-key.pem` in `dir` and writes a fresh `cert.pem`/`key.pem`
/// valid for localhost, 127.0.0.1, ::1 and `extra_sans`. Private keys are written mode 0600.
pub fn generate(dir: &Path, extra_sans: &[String]) -> Result<CertPaths, CertError> {
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
        let second = generate(&dir, &[]).expect("again");
        assert!(second.reused_ca);
        assert_eq!(ca_before, fs::read_to_string(&second.ca_cert).expect("ca"));
        let _ = fs::remove_dir_all(&dir);
    }
}
