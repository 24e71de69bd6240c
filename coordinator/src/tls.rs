//! Mutual TLS for the peer port: the cluster's CA, node certificates, and who is
//! calling.
//!
//! A cluster has one CA (`ca.pem`, `ca.key`) and a certificate per node
//! (`node-N.pem`, `node-N.key`) whose only name is [`node_dns_name`]`(N)`. A node's peer
//! port accepts only connections whose client certificate the CA signed, and a node
//! dials a peer expecting the certificate of that peer's id, so both ends of every
//! peer connection know which node the other is.
//!
//! Invariants:
//! - The node id of a caller comes from its verified certificate
//!   ([`caller_node`]), never from a field of the message; the Raft service refuses a
//!   message whose `from` differs. Only `seatd certs` makes certificates the CA
//!   signs, and each names exactly one node.
//! - [`write_certs`] never replaces a file: a CA or node key that exists is kept (a
//!   new node added later is signed by the same CA), so running it twice is harmless.
//! - Private keys are written readable by their owner only.
//!
//! Caveat: certificates are valid for [`CERT_VALIDITY_DAYS`] and there is no
//! revocation; a node whose key leaked is removed by re-issuing the CA.

use std::path::{Path, PathBuf};

use raft_store::raft::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::StartError;

/// The CA's certificate and key, in a certs directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// How long the certificates `seatd certs` makes are valid.
pub const CERT_VALIDITY_DAYS: i64 = 3_650;
/// The CA certificate's common name.
const CA_NAME: &str = "seatd cluster CA";
/// The suffix of every node's certificate name.
const NODE_NAME_SUFFIX: &str = ".seatd.internal";
/// Largest certificate or key file read (a PEM chain is a few KiB).
use crate::limits::PEM_BYTES_MAX;

/// The one name in node `id`'s certificate, and the name a peer expects when dialing it.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}{NODE_NAME_SUFFIX}")
}

/// Whether a DER certificate names node `id` (its subject alternative names).
pub fn cert_names_node(der: &[u8], id: NodeId) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = DnsName::try_from(node_dns_name(id)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name))
        .is_ok()
}

/// Whether `request` came from a node of the cluster: over the peer port, whose TLS
/// accepts only certificates the cluster CA signed, and every such certificate is a
/// node's. `false` on a client port.
pub fn from_a_node<T>(request: &tonic::Request<T>) -> bool {
    request.peer_certs().is_some_and(|c| !c.is_empty())
}

/// Which of `nodes` made `request`: the one its verified client certificate names.
/// `None` on a client port, or for a certificate naming none of them.
pub fn caller_node<T>(
    request: &tonic::Request<T>,
    nodes: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    let certs = request.peer_certs()?;
    let der = certs.first()?;
    nodes
        .into_iter()
        .find(|id| cert_names_node(der.as_ref(), *id))
}

pub fn node_cert_file(id: NodeId) -> String {
    format!("node-{id}.pem")
}

pub fn node_key_file(id: NodeId) -> String {
    format!("node-{id}.key")
}

/// What [`write_certs`] did, file by file.
#[derive(Debug, Default)]
pub struct Written {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

fn read_pem(path: &Path) -> Result<String, StartError> {
    let bad = |e: String| StartError::Config(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if size > PEM_BYTES_MAX {
        return Err(bad(format!(
            "{size} bytes; a PEM file here is at most {PEM_BYTES_MAX}"
        )));
    }
    std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))
}

fn write_new(path: &Path, text: &str, private: bool) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| StartError::Config(format!("{}: cannot create: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| StartError::Config(format!("{}: cannot write: {e}", path.display())))
}

fn tls_error(what: &str) -> impl Fn(rcgen::Error) -> StartError + '_ {
    move |e| StartError::Config(format!("{what}: {e}"))
}

/// Valid from a day ago (clocks of a cluster differ a little) for
/// [`CERT_VALIDITY_DAYS`].
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
}

/// The CA's parameters. The issuer of a node certificate is rebuilt from these and
/// the CA key (its name and key identifier are all a signature needs), so an existing
/// CA signs new nodes without its certificate being parsed.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The CA's key in `dir`, with its certificate created if neither file exists yet.
fn ca(dir: &Path, written: &mut Written) -> Result<KeyPair, StartError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let key = KeyPair::from_pem(&read_pem(&key_path)?)
                .map_err(tls_error(&key_path.display().to_string()))?;
            written.kept.extend([cert_path, key_path]);
            Ok(key)
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(tls_error("CA key"))?;
            let mut params = ca_params();
            validity(&mut params);
            let cert = params
                .self_signed(&key)
                .map_err(tls_error("CA certificate"))?;
            write_new(&key_path, &key.serialize_pem(), true)?;
            write_new(&cert_path, &cert.pem(), false)?;
            written.created.extend([cert_path, key_path]);
            Ok(key)
        }
        _ => Err(StartError::Config(format!(
            "{} has one of {CA_CERT_FILE} and {CA_KEY_FILE} but not the other; \
             restore the missing one or start a new certs directory",
            dir.display()
        ))),
    }
}

/// Node `id`'s certificate and key, signed by `issuer`.
fn node_cert(id: NodeId, issuer: &Issuer<'_, &KeyPair>) -> Result<(String, String), StartError> {
    let key = KeyPair::generate().map_err(tls_error("node key"))?;
    let mut params =
        CertificateParams::new(vec![node_dns_name(id)]).map_err(tls_error("node certificate"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("seatd node {id}"));
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Each node is a server (its peer port) and a client (dialing its peers).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(tls_error("node certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a CA (unless `dir` has one) and a certificate for each of `nodes` (unless
/// it has one) into `dir`, creating it.
pub fn write_certs(dir: &Path, nodes: &[NodeId]) -> Result<Written, StartError> {
    if nodes.contains(&0) {
        return Err(StartError::Config("node ids start at 1".into()));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Config(format!("{}: cannot create: {e}", dir.display())))?;
    let mut written = Written::default();
    let ca_key = ca(dir, &mut written)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    for &id in nodes {
        let cert_path = dir.join(node_cert_file(id));
        let key_path = dir.join(node_key_file(id));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => written.kept.extend([cert_path, key_path]),
            (false, false) => {
                let (cert, key) = node_cert(id, &issuer)?;
                write_new(&key_path, &key, true)?;
                write_new(&cert_path, &cert, false)?;
                written.created.extend([cert_path, key_path]);
            }
            _ => {
                return Err(StartError::Config(format!(
                    "{} has one of {} and {} but not the other",
                    dir.display(),
                    node_cert_file(id),
                    node_key_file(id)
                )))
            }
        }
    }
    Ok(written)
}

/// A node's TLS material for its peer port and for dialing its peers.
#[derive(Clone)]
pub struct PeerTls {
    pub node: NodeId,
    ca: Certificate,
    identity: Identity,
}

impl PeerTls {
    /// Loads node `node`'s certificate, key and the cluster CA from `dir`, checking
    /// that the certificate names `node`.
    pub fn load(dir: &Path, node: NodeId) -> Result<Self, StartError> {
        let ca = read_pem(&dir.join(CA_CERT_FILE))?;
        let cert_path = dir.join(node_cert_file(node));
        let cert = read_pem(&cert_path)?;
        let key = read_pem(&dir.join(node_key_file(node)))?;
        let names_node = CertificateDer::from_pem_slice(cert.as_bytes())
            .is_ok_and(|der| cert_names_node(der.as_ref(), node));
        if !names_node {
            return Err(StartError::Config(format!(
                "{} is not node {node}'s certificate; \
                 `seatd certs --out {} --nodes {node}` makes one",
                cert_path.display(),
                dir.display()
            )));
        }
        Ok(Self {
            node,
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        })
    }

    /// The peer port's TLS: this node's certificate; callers must present one the
    /// cluster CA signed.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// TLS for dialing node `target`: only `target`'s certificate is accepted, and this
    /// node's is presented.
    pub fn client(&self, target: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_dns_name(target))
    }
}

/// TLS on a client port (`--tls-cert`, `--tls-key` on nodes and frontends): the
/// certificate chain and key in the two PEM files, checked here so a wrong file stops
/// the start with its name. Callers present no certificate: they prove who they are
/// with bearer tokens.
pub fn client_port_server(cert: &Path, key: &Path) -> Result<ServerTlsConfig, StartError> {
    let cert_pem = read_pem(cert)?;
    let key_pem = read_pem(key)?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default();
    if certs.is_empty() {
        return Err(StartError::Config(format!(
            "{}: no PEM certificate in it",
            cert.display()
        )));
    }
    if rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).is_err() {
        return Err(StartError::Config(format!(
            "{}: no PEM private key in it",
            key.display()
        )));
    }
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
}

/// TLS for a frontend dialing the nodes' client ports (`--nodes-ca`): the nodes'
/// certificates must be signed by the CA in `ca` (PEM) and name the host dialled.
pub fn client_port_dialer(ca: &Path) -> Result<ClientTlsConfig, StartError> {
    let pem = read_pem(ca)?;
    if CertificateDer::from_pem_slice(pem.as_bytes()).is_err() {
        return Err(StartError::Config(format!(
            "{}: no PEM certificate in it",
            ca.display()
        )));
    }
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path(), &[1, 12]).unwrap();
        let pem = std::fs::read(dir.path().join(node_cert_file(1))).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert!(cert_names_node(der.as_ref(), 1));
        for other in [0, 2, 11, 12, 10, u64::MAX] {
            assert!(!cert_names_node(der.as_ref(), other), "names node {other}");
        }
        assert!(!cert_names_node(b"not a certificate", 1));
    }

    #[test]
    fn certs_are_written_once_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_certs(dir.path(), &[1, 2]).unwrap();
        assert_eq!(first.created.len(), 6);
        let ca_before = std::fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let n1_before = std::fs::read(dir.path().join(node_cert_file(1))).unwrap();
        // Again, with one more node: everything kept, node 3 signed by the same CA.
        let second = write_certs(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(second.created.len(), 2);
        assert_eq!(
            std::fs::read(dir.path().join(CA_CERT_FILE)).unwrap(),
            ca_before
        );
        assert_eq!(
            std::fs::read(dir.path().join(node_cert_file(1))).unwrap(),
            n1_before
        );
        for id in [1, 2, 3] {
            assert_eq!(PeerTls::load(dir.path(), id).unwrap().node, id);
        }
        // Node 2's files presented as node 1's are refused.
        std::fs::copy(
            dir.path().join(node_cert_file(2)),
            dir.path().join(node_cert_file(1)),
        )
        .unwrap();
        assert!(PeerTls::load(dir.path(), 1).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path(), &[1]).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(write_certs(dir.path(), &[2]).is_err());
    }
}
