//! Certificates made at test time (rcgen): a CA, a server certificate for
//! `localhost`, a client certificate, and an unrelated CA, as PEM files in a
//! directory removed on drop.

use super::unique;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A CA, a server certificate for `localhost`, a client certificate, and an
    /// unrelated CA, as PEM files.
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let issuer = ca("vitalgate test CA");
        write("ca.pem", issuer.pem());
        write("other-ca.pem", ca("some other CA").pem());

        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write("server.pem", p.signed_by(&key, &issuer).unwrap().pem());
        write("server.key", key.serialize_pem());

        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "vitalgate");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write("client.pem", p.signed_by(&key, &issuer).unwrap().pem());
        write("client.key", key.serialize_pem());
        Pki { dir }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
