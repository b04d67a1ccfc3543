//! The fleet's certificate authority.
//!
//! One CA, shared by every control-plane replica, signs two kinds of certificates:
//! - an agent's, naming its host as the DNS name `{host_id}.agents.berth`: the control plane
//!   dials an agent expecting exactly that name, and the registry accepts a heartbeat for a host
//!   only from a client presenting it, so one host cannot speak for another;
//! - a control plane's, named `control-plane.berth`: agents serve commands only to clients
//!   presenting it (an agent's certificate, though signed by the same CA, is refused).
//!
//! An agent's key never leaves its host: the agent makes a PKCS #10 certificate signing
//! request ([`agent_csr`], RFC 2986) and the CA signs it ([`Authority::sign_agent_csr`]),
//! taking only the public key from the request and the names from the host id it was given.
//! Every such certificate gets a random serial number (RFC 5280 §4.1.2.2), which is what a
//! revocation names ([`serial_hex`]).
//!
//! Keys are ECDSA P-256. Nothing here does I/O: callers store the PEM where they want.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
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
    /// The request is not PEM, not PKCS #10, or its signature does not verify with the key it
    /// carries (so whoever sent it does not hold that key).
    #[error("the certificate signing request is not valid: {0}")]
    InvalidCsr(rcgen::Error),
}

/// A certificate signing request and the private key it was made with, PEM. The key stays
/// with whoever made the request; only `csr_pem` is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// A certificate the CA signed, and its serial number as lower-case hex (what a revocation
/// names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
}

/// A new ECDSA P-256 key for `host_id`'s agent and a certificate signing request for it. The
/// request asks for `{host_id}.agents.berth`, but the CA decides the names itself: see
/// [`Authority::sign_agent_csr`].
pub fn agent_csr(host_id: &str) -> Result<KeyAndCsr, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![agent_server_name(host_id)])?;
    params.distinguished_name = name(&format!("berth agent {host_id}"));
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
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

    /// A certificate and a new key for `host_id`'s agent, usable as server (it serves the
    /// agent API) and as client (it calls the registry). For tests and tools that stand in
    /// for agents: the registry itself only signs requests ([`Authority::sign_agent_csr`]),
    /// so it never holds an agent's key.
    pub fn issue_agent(&self, host_id: &str) -> Result<Identity, PkiError> {
        check_host_id(host_id)?;
        self.issue(
            &agent_server_name(host_id),
            &format!("berth agent {host_id}"),
        )
    }

    /// Signs an agent's certificate signing request for `host_id`: the certificate carries the
    /// request's public key and nothing else of it. Its name is `{host_id}.agents.berth`
    /// whatever the request asked for, it is usable as server and client, valid until 2036,
    /// and has a random 159-bit serial number.
    ///
    /// Errors: `host_id` is not a DNS label ([`PkiError::HostId`]); the request does not parse
    /// or its signature does not verify ([`PkiError::InvalidCsr`]).
    pub fn sign_agent_csr(&self, host_id: &str, csr_pem: &str) -> Result<Issued, PkiError> {
        check_host_id(host_id)?;
        let request =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?;
        let mut params = CertificateParams::new(vec![agent_server_name(host_id)])?;
        params.distinguished_name = name(&format!("berth agent {host_id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        // rcgen's default serial is a hash of the public key: an agent that joins again with
        // the same key would get the serial of a certificate that may have been revoked.
        let mut serial: [u8; 20] = rand::random();
        serial[0] &= 0x7f; // positive, and at most 20 octets (RFC 5280 §4.1.2.2)
        serial[0] |= 0x40; // no leading zero octet, so the hex form is canonical
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let signed = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&issuer)?;
        Ok(Issued {
            cert_pem: signed.pem(),
            serial: hex(&serial),
        })
    }

    /// A certificate and a new key for a client of the HTTP API's mutual TLS, named
    /// `{name}.clients.berth` and usable as client only: it opens the TLS handshake and
    /// nothing else (agents serve control planes only, by name).
    ///
    /// Errors: `name` is not a DNS label ([`PkiError::HostId`]).
    pub fn issue_api_client(&self, name: &str) -> Result<Identity, PkiError> {
        check_host_id(name)?;
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![format!("{name}.clients.berth")])?;
        params.distinguished_name = self::name(&format!("berth API client {name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
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

/// Host ids name certificates as a DNS label: 1 to 63 of `a-z`, `0-9`, `-` (RFC 1035 §2.3.1).
fn check_host_id(host_id: &str) -> Result<(), PkiError> {
    let valid = !host_id.is_empty()
        && host_id.len() <= 63
        && host_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(PkiError::HostId(host_id.to_string()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial number of a DER certificate as lower-case hex without leading zero octets, or
/// None if it does not parse. The TLS layer has already checked the CA signed it.
pub fn serial_hex(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    Some(hex(&raw[start..]))
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
    fn a_signed_request_names_the_host_it_was_signed_for_and_keeps_the_requesters_key() {
        let ca = Authority::generate().unwrap();
        // The request asks for host-1; the CA was told host-2 and that is what it signs.
        let request = agent_csr("host-1").unwrap();
        let issued = ca.sign_agent_csr("host-2", &request.csr_pem).unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        assert_eq!(peer_host_id(&der).as_deref(), Some("host-2"));
        assert_eq!(serial_hex(&der).as_deref(), Some(issued.serial.as_str()));
        assert_eq!(issued.serial.len(), 40);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let key = KeyPair::from_pem(&request.key_pem).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        // Serials differ even for the same key.
        let again = ca.sign_agent_csr("host-2", &request.csr_pem).unwrap();
        assert_ne!(again.serial, issued.serial);
        assert!(!format!("{request:?}").contains(&request.key_pem));
    }

    #[test]
    fn requests_that_do_not_verify_are_refused() {
        let ca = Authority::generate().unwrap();
        let request = agent_csr("h").unwrap();
        assert!(matches!(
            ca.sign_agent_csr("h", "not a request"),
            Err(PkiError::InvalidCsr(_))
        ));
        // One bit of the signed body flipped: the signature no longer verifies.
        let mut der = pem_to_der(&request.csr_pem).unwrap();
        der[40] ^= 1;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert!(ca.sign_agent_csr("h", &tampered).is_err());
        assert!(matches!(
            ca.sign_agent_csr("H_1", &request.csr_pem),
            Err(PkiError::HostId(_))
        ));
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
