//! The TLS certificate of each Postgres instance: issued by the fleet CA for the names
//! clients dial (the host's address from other engines, the alias on the database network
//! from the same engine), kept sealed with the database's credentials so the desired spec
//! is the same on every pass, and issued again when the names change or expiry nears.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How long an instance certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate with less than this left is issued again. The new one reaches the
/// instance as a changed config file, which recreates its container (ADR 004).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One instance's certificate and key (PEM), and what it was issued for.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PostgresCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The subject alternative names, in the order they were asked for.
    pub names: Vec<String>,
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for PostgresCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCert")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PostgresCert {
    fn fits(&self, names: &[String], now: DateTime<Utc>) -> bool {
        let renew_before = chrono::Duration::from_std(RENEW_BEFORE).unwrap_or_default();
        self.names == names && self.not_after - renew_before > now
    }
}

/// Makes `certs` hold a current certificate for every instance of `wanted` (instance id ->
/// names), issuing where one is missing, names other things, or expires within
/// [`RENEW_BEFORE`] of `now`; certificates of instances no longer wanted are dropped.
/// Returns whether anything changed (and so must be stored before any container uses it).
///
/// Errors: the CA cannot issue (an unencodable name).
pub fn ensure_certs(
    certs: &mut BTreeMap<String, PostgresCert>,
    wanted: &BTreeMap<String, Vec<String>>,
    authority: &pki::Authority,
    now: DateTime<Utc>,
) -> Result<bool, pki::PkiError> {
    let before = certs.len();
    certs.retain(|id, _| wanted.contains_key(id));
    let mut changed = certs.len() != before;
    for (id, names) in wanted {
        if certs.get(id).is_some_and(|c| c.fits(names, now)) {
            continue;
        }
        let identity = authority.issue_server(names, VALIDITY)?;
        certs.insert(
            id.clone(),
            PostgresCert {
                cert_pem: identity.cert_pem,
                key_pem: identity.key_pem,
                names: names.clone(),
                not_after: now + chrono::Duration::from_std(VALIDITY).unwrap_or_default(),
            },
        );
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(id, names)| {
                (
                    id.to_string(),
                    names.iter().map(|n| n.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn issued_once_then_kept_then_renewed_for_new_names_or_near_expiry() {
        let ca = pki::Authority::generate().unwrap();
        let now = Utc::now();
        let mut certs = BTreeMap::new();
        let w = wanted(&[("a", &["n1-h1", "10.0.0.1"]), ("b", &["n1-h2", "10.0.0.2"])]);
        assert!(ensure_certs(&mut certs, &w, &ca, now).unwrap());
        let first = certs.clone();
        assert!(
            !ensure_certs(&mut certs, &w, &ca, now).unwrap(),
            "nothing to do"
        );
        assert_eq!(certs, first);

        // The host moved: only its instance gets a new certificate.
        let moved = wanted(&[("a", &["n1-h1", "10.0.0.9"]), ("b", &["n1-h2", "10.0.0.2"])]);
        assert!(ensure_certs(&mut certs, &moved, &ca, now).unwrap());
        assert_ne!(certs["a"], first["a"]);
        assert_eq!(certs["b"], first["b"]);

        // Close to expiry: renewed.
        let later = now
            + chrono::Duration::from_std(VALIDITY - RENEW_BEFORE).unwrap()
            + chrono::Duration::days(1);
        let before = certs.clone();
        assert!(ensure_certs(&mut certs, &moved, &ca, later).unwrap());
        assert_ne!(certs["b"].cert_pem, before["b"].cert_pem);
        assert!(certs["b"].not_after > before["b"].not_after);

        // An instance that is no longer wanted loses its certificate.
        assert!(
            ensure_certs(
                &mut certs,
                &wanted(&[("b", &["n1-h2", "10.0.0.2"])]),
                &ca,
                later
            )
            .unwrap()
        );
        assert_eq!(certs.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn debug_hides_the_key() {
        let ca = pki::Authority::generate().unwrap();
        let mut certs = BTreeMap::new();
        ensure_certs(&mut certs, &wanted(&[("a", &["x"])]), &ca, Utc::now()).unwrap();
        let shown = format!("{:?}", certs["a"]);
        assert!(!shown.contains("PRIVATE KEY") && !shown.contains(&certs["a"].key_pem));
    }
}
