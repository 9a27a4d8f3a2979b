//! Proving that an address is a given manager, before any use of it.
//!
//! Swarm managers already hold a PKI: on its raft port (2377) a manager
//! presents a TLS certificate issued by the swarm's root CA, with CN = its
//! node ID, OU = swarm-manager and O = the cluster ID (swarmkit ca/config.go).
//! The handshake proves the peer holds that certificate's key (its signature
//! over the handshake is checked), and the chain is checked against the root
//! CA remembered while the swarm was healthy. The server then asks for a
//! client certificate we do not have; what it says after that does not matter.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{addr}: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    #[error("{addr} is not manager {node} of cluster {cluster}: {reason}")]
    NotThatManager {
        addr: SocketAddr,
        node: String,
        cluster: String,
        reason: String,
    },
    #[error("the remembered swarm root CA cannot be used: {0}")]
    BadRoot(String),
}

/// Why a peer's certificate does not name the manager expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    #[error("certificate does not chain to the swarm root CA: {0}")]
    NotFromRoot(String),
    #[error("certificate is for cluster {0:?}")]
    OtherCluster(String),
    #[error("certificate is for a {0:?}, not a manager")]
    NotManager(String),
    #[error("certificate is for node {0:?}")]
    OtherNode(String),
}

/// Who must be at the address.
#[derive(Debug, Clone)]
pub struct Expected {
    pub root_ca_pem: String,
    pub cluster: String,
    pub node: String,
}

/// What the certificate of a swarm node says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub cn: String,
    pub ou: String,
    pub o: String,
}

fn first<'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> String {
    it.next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub fn subject_of(der: &[u8]) -> Result<Subject, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Unreadable(e.to_string()))?;
    let s = cert.subject();
    let subject = Subject {
        cn: first(s.iter_common_name()),
        ou: first(s.iter_organizational_unit()),
        o: first(s.iter_organization()),
    };
    Ok(subject)
}

/// Checks the subject: the expected manager of the expected cluster.
pub fn check_subject(s: &Subject, exp: &Expected) -> Result<(), CertError> {
    if s.o != exp.cluster {
        return Err(CertError::OtherCluster(s.o.clone()));
    }
    if s.ou != "swarm-manager" {
        return Err(CertError::NotManager(s.ou.clone()));
    }
    if s.cn != exp.node {
        return Err(CertError::OtherNode(s.cn.clone()));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Seen {
    chain: Option<Result<Subject, CertError>>,
    signature: bool,
}

#[derive(Debug)]
struct SwarmVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for SwarmVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| CertError::Unreadable(e.to_string()))
            .and_then(|cert| {
                cert.verify_for_usage(
                    self.provider.signature_verification_algorithms.all,
                    &self.roots,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                )
                .map(|_| ())
                .map_err(|e| CertError::NotFromRoot(e.to_string()))
            })
            .and_then(|()| subject_of(end_entity));
        let ok = checked.is_ok();
        if let Ok(mut seen) = self.seen.lock() {
            seen.chain = Some(checked);
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signed(r)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signed(r)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl SwarmVerifier {
    fn signed(
        &self,
        r: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if r.is_ok() {
            if let Ok(mut seen) = self.seen.lock() {
                seen.signature = true;
            }
        }
        r
    }
}

fn roots(pem: &str) -> Result<Vec<rustls::pki_types::TrustAnchor<'static>>, IdentityError> {
    let mut out = Vec::new();
    for der in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let der = der.map_err(|e| IdentityError::BadRoot(e.to_string()))?;
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| IdentityError::BadRoot(e.to_string()))?
            .to_owned();
        out.push(anchor);
    }
    if out.is_empty() {
        return Err(IdentityError::BadRoot("no certificate in it".into()));
    }
    Ok(out)
}

/// Proves that `addr` (a manager's raft address) is manager `exp.node` of
/// cluster `exp.cluster`: returns its certificate's subject, or why not.
pub async fn prove_manager(
    addr: SocketAddr,
    exp: &Expected,
    timeout: Duration,
) -> Result<Subject, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let verifier = SwarmVerifier {
        roots: roots(&exp.root_ca_pem)?,
        provider: provider.clone(),
        seen: seen.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::BadRoot(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let unreachable = |message: String| IdentityError::Unreachable { addr, message };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(addr.ip().into());
        // The outcome of the handshake itself is not the verdict (see above).
        let _ = connector.connect(name, tcp).await;
        Ok::<(), String>(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| unreachable(format!("no TLS handshake within {}s", timeout.as_secs())))?
        .map_err(unreachable)?;
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| unreachable("poisoned".into()))?);
    let not = |reason: String| IdentityError::NotThatManager {
        addr,
        node: exp.node.clone(),
        cluster: exp.cluster.clone(),
        reason,
    };
    let subject = match seen.chain {
        None => return Err(unreachable("the peer showed no certificate".into())),
        Some(Err(e)) => return Err(not(e.to_string())),
        Some(Ok(s)) => s,
    };
    if !seen.signature {
        return Err(not(
            "the peer did not prove it holds the certificate's key".into()
        ));
    }
    check_subject(&subject, exp).map_err(|e| not(e.to_string()))?;
    Ok(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expected {
        Expected {
            root_ca_pem: String::new(),
            cluster: "c1".into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn only_the_expected_manager_of_the_expected_cluster_passes() {
        let good = Subject {
            cn: "n1".into(),
            ou: "swarm-manager".into(),
            o: "c1".into(),
        };
        assert!(check_subject(&good, &exp()).is_ok());
        let other_node = Subject {
            cn: "n2".into(),
            ..good.clone()
        };
        assert_eq!(
            check_subject(&other_node, &exp()),
            Err(CertError::OtherNode("n2".into()))
        );
        let worker = Subject {
            ou: "swarm-worker".into(),
            ..good.clone()
        };
        assert_eq!(
            check_subject(&worker, &exp()),
            Err(CertError::NotManager("swarm-worker".into()))
        );
        let other_cluster = Subject {
            o: "c2".into(),
            ..good
        };
        assert_eq!(
            check_subject(&other_cluster, &exp()),
            Err(CertError::OtherCluster("c2".into()))
        );
    }

    #[test]
    fn a_root_ca_that_is_not_pem_is_an_error() {
        assert!(matches!(roots("garbage"), Err(IdentityError::BadRoot(_))));
    }
}
