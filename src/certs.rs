//! `relayd certs init DIR --nodes a,b,w`: a private CA and one certificate per node for the
//! cluster link's mutual TLS, so that a pair and its witness can be set up in minutes.
//! (docs/operations.md says how to use your own PKI instead.)

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// Certificates are valid from the start of this year for this many years.
const VALID_YEARS: i32 = 10;

/// Why `certs init` made no certificates (or not all of them).
#[derive(Debug)]
pub enum CertsError {
    NoNodes,
    /// DIR/ca.key exists: a cluster's CA is never replaced by mistake.
    CaKeyExists(PathBuf),
    /// A directory or file could not be made or written.
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    Generate(rcgen::Error),
}

impl fmt::Display for CertsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertsError::NoNodes => write!(f, "--nodes needs at least one node name"),
            CertsError::CaKeyExists(path) => {
                write!(f, "{}: a CA key exists already; not overwriting it", path.display())
            }
            CertsError::Write { path, source } => write!(f, "{}: {source}", path.display()),
            CertsError::Generate(e) => write!(f, "certificate generation: {e}"),
        }
    }
}

impl std::error::Error for CertsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CertsError::NoNodes | CertsError::CaKeyExists(_) => None,
            CertsError::Write { source, .. } => Some(source),
            CertsError::Generate(e) => Some(e),
        }
    }
}

impl From<rcgen::Error> for CertsError {
    fn from(e: rcgen::Error) -> CertsError {
        CertsError::Generate(e)
    }
}

/// Writes DIR/ca.pem, DIR/ca.key and, for each node, DIR/NAME.pem and DIR/NAME.key. Refuses to
/// overwrite an existing CA key, so that a cluster's CA is never replaced by mistake.
pub fn init(dir: &Path, nodes: &[String]) -> Result<(), CertsError> {
    if nodes.is_empty() {
        return Err(CertsError::NoNodes);
    }
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(CertsError::CaKeyExists(ca_key_path));
    }
    std::fs::create_dir_all(dir)
        .map_err(|source| CertsError::Write { path: dir.to_path_buf(), source })?;
    let year = chrono::Utc::now().year();
    let validity = |params: &mut CertificateParams| {
        params.not_before = date_time_ymd(year, 1, 1);
        params.not_after = date_time_ymd(year + VALID_YEARS, 1, 1);
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("relayd cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644)?;
    write(&ca_key_path, ca_key_pem.as_bytes(), 0o600)?;

    for node in nodes {
        let mut params = CertificateParams::new(vec![node.clone()])?;
        params.distinguished_name = name(node);
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(&dir.join(format!("{node}.pem")), cert.pem().as_bytes(), 0o644)?;
        write(&dir.join(format!("{node}.key")), key.serialize_pem().as_bytes(), 0o600)?;
    }
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), CertsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(content).and_then(|()| file.sync_all()))
        .map_err(|source| CertsError::Write { path: path.to_path_buf(), source })
}
