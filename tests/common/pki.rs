//! A test PKI made with rcgen: a CA and the leaves it signs, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::path_of;

/// A CA and what it signed, as PEM files in a directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("taphook test CA {name}"));
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_path(&self) -> String {
        path_of(&self.path("ca.pem"))
    }

    /// A leaf for `names` signed by the CA, with `key` (a new ECDSA P-256
    /// key when `None`), written to `<stem>.pem` (leaf then CA: a chain)
    /// and `<stem>.key`; its serial, to tell certificates apart.
    pub fn leaf(&self, stem: &str, names: &[&str], key: Option<KeyPair>) -> Vec<u8> {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = key.unwrap_or_else(|| KeyPair::generate().unwrap());
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let chain = format!("{}{}", cert.pem(), self.ca.pem());
        write_atomically(&self.path(&format!("{stem}.pem")), &chain);
        write_atomically(&self.path(&format!("{stem}.key")), &key.serialize_pem());
        cert.der().to_vec()
    }
}

/// Writes through a rename, as renewals do (a reader never sees half).
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
