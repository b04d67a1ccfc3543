//! The fleet's certificate authority.
//!
//! One CA, shared by every control-plane replica, signs two kinds of certificates:
//! - an agent's, naming its host as the DNS name `{host_id}.agents.berth`: the control plane
//!   dials an agent expecting exactly that name, and the registry accepts a heartbeat for a host
//!   only from a client presenting it, so one host cannot speak for another;
//! - a control plane's, named `control-plane.berth`: agents serve commands only to clients
//!   presenting it (an agent's certificate, though signed by the same CA, is refused).
//!
//! Keys are ECDSA P-256. Nothing here does I/O: callers store the PEM where they want.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The name every control-plane replica's certificate carries.
pub const CONTROL_PLANE_NAME: &str = "control-plane.berth";
const AGENT_SUFFIX: &str = ".agents.berth";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} cannot be a host id in a certificate")]
    HostId(String),
    #[error("a server certificate needs at least one name")]
    NoNames,
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The DNS name an agent's certificate carries, and the name the control plane expects
/// when it dials that host's agent.
pub fn agent_server_name(host_id: &str) -> String {
    format!("{host_id}{AGENT_SUFFIX}")
}

pub struct Authority {
    ca: Identity,
}

impl Authority {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = name("berth fleet CA");
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            ca: Identity {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    pub fn from_identity(ca: Identity) -> Authority {
        Authority { ca }
    }

    pub fn identity(&self) -> &Identity {
        &self.ca
    }

    pub fn cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// A certificate for `host_id`'s agent, usable as server (it serves the agent API) and
    /// as client (it calls the registry).
    pub fn issue_agent(&self, host_id: &str) -> Result<Identity, PkiError> {
        let valid = !host_id.is_empty()
            && host_id.len() <= 63
            && host_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(PkiError::HostId(host_id.to_string()));
        }
        self.issue(
            &agent_server_name(host_id),
            &format!("berth agent {host_id}"),
        )
    }

    /// A certificate for a control-plane replica (server of the registry, client of agents).
    pub fn issue_control_plane(&self) -> Result<Identity, PkiError> {
        self.issue(CONTROL_PLANE_NAME, "berth control plane")
    }

    /// A server certificate for a Postgres instance: `names` are its subject alternative
    /// names (an IP address becomes an IP SAN, anything else a DNS name; libpq's
    /// `sslmode=verify-full` checks the host it dialled against them, IP SANs included since
    /// PostgreSQL 14). Valid from now for `valid_for`.
    ///
    /// Errors: `names` empty, or a name rcgen cannot encode.
    pub fn issue_server(
        &self,
        names: &[String],
        valid_for: std::time::Duration,
    ) -> Result<Identity, PkiError> {
        let Some(first) = names.first() else {
            return Err(PkiError::NoNames);
        };
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(first);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that disagree between the issuer and the clients.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + valid_for;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issue(&self, dns_name: &str, common_name: &str) -> Result<Identity, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns_name.to_string()])?;
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The DNS names a DER certificate is issued for.
fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// The host an agent certificate was issued to. The TLS layer has already checked that the
/// CA signed it.
pub fn peer_host_id(cert_der: &[u8]) -> Option<String> {
    dns_names(cert_der)
        .into_iter()
        .find_map(|n| n.strip_suffix(AGENT_SUFFIX).map(str::to_string))
}

/// Whether a certificate (already verified against the CA) is a control plane's.
pub fn is_control_plane(cert_der: &[u8]) -> bool {
    dns_names(cert_der).iter().any(|n| n == CONTROL_PLANE_NAME)
}

/// The first certificate of a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_name_their_host_and_nothing_else() {
        let ca = Authority::generate().unwrap();
        let agent = ca.issue_agent("host-2").unwrap();
        let der = pem_to_der(&agent.cert_pem).unwrap();
        assert_eq!(peer_host_id(&der).as_deref(), Some("host-2"));
        assert!(!is_control_plane(&der));
        let cp = pem_to_der(&ca.issue_control_plane().unwrap().cert_pem).unwrap();
        assert!(is_control_plane(&cp));
        assert_eq!(peer_host_id(&cp), None);
    }

    #[test]
    fn host_ids_that_are_not_dns_labels_are_refused() {
        let ca = Authority::generate().unwrap();
        assert!(ca.issue_agent("Host_1").is_err());
        assert!(ca.issue_agent("").is_err());
        assert!(ca.issue_agent("a.b").is_err());
    }

    #[test]
    fn an_authority_reloaded_from_pem_still_signs() {
        let ca = Authority::generate().unwrap();
        let again = Authority::from_identity(ca.identity().clone());
        let der = pem_to_der(&again.issue_agent("h").unwrap().cert_pem).unwrap();
        assert_eq!(peer_host_id(&der).as_deref(), Some("h"));
        assert_eq!(peer_host_id(b"not a certificate"), None);
    }
}
