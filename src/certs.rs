//! `relayd certs init DIR --nodes a,b,w`: a private CA and one certificate per node for the
//! cluster link's mutual TLS, so that a pair and its witness can be set up in minutes.
//! (docs/operations.md says how to use your own PKI instead.)

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// Certificates are valid from the start of this year for this many years.
const VALID_YEARS: i32 = 10;

/// Writes DIR/ca.pem, DIR/ca.key and, for each node, DIR/NAME.pem and DIR/NAME.key. Refuses to
/// overwrite an existing CA key, so that a cluster's CA is never replaced by mistake.
pub fn init(dir: &Path, nodes: &[String]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("--nodes needs at least one node name".into());
    }
    if dir.join("ca.key").exists() {
        return Err(format!(
            "{}: a CA key exists already; not overwriting it",
            dir.join("ca.key").display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let year = chrono::Utc::now().year();
    let validity = |params: &mut CertificateParams| {
        params.not_before = date_time_ymd(year, 1, 1);
        params.not_after = date_time_ymd(year + VALID_YEARS, 1, 1);
    };
    let error = |e: rcgen::Error| format!("certificate generation: {e}");

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    ca_params.distinguished_name = name("relayd cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_key = KeyPair::generate().map_err(error)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(error)?;
    write(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key_pem.as_bytes(), 0o600)?;

    for node in nodes {
        let mut params = CertificateParams::new(vec![node.clone()]).map_err(error)?;
        params.distinguished_name = name(node);
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params);
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.signed_by(&key, &ca).map_err(error)?;
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

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
