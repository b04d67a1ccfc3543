//! Host identity in etcd: which certificate is each host's, which certificates are revoked,
//! and the re-join tokens operators issue. The rules (who may join, when a certificate is
//! refused) are the registry's; this module only makes each change one transaction, so two
//! replicas cannot both let the same host id join.
//!
//! | key | value |
//! |---|---|
//! | `{p}/host-certs/{host}` | [`HostCertificate`]: the serial of the one certificate the host may use |
//! | `{p}/revoked-certs/{serial}` | [`RevokedCertificate`]: the deny list, checked on every registry call |
//! | `{p}/rejoin-tokens/{host}` | [`RejoinToken`]: at most one per host, its SHA-256 only, deleted when used |

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, Versioned, decode, encode};

/// The certificate a host joined with, by serial number (lower-case hex, see `pki::serial_hex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCertificate {
    pub serial: String,
    pub issued_at: DateTime<Utc>,
}

/// An entry of the deny list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    pub host_id: String,
    pub revoked_at: DateTime<Utc>,
    /// Why, for operators: "host removed", "replaced by a re-join".
    pub reason: String,
}

/// A host-bound, single-use token that lets `host` join again although it already joined.
/// Only the token's SHA-256 is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinToken {
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for RejoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejoinToken")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How a certificate a registry caller presented stands for the host it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStanding {
    /// The host's current certificate.
    Current,
    /// On the deny list.
    Revoked,
    /// The host has another certificate now (it re-joined), or no longer exists.
    NotCurrent,
    /// The host is registered but no certificate is recorded for it: it joined before
    /// certificates were recorded. The first one it registers with becomes its certificate.
    Unrecorded,
}

impl Store {
    /// The certificate recorded for a host, with the revision it was read at.
    pub async fn host_certificate(
        &self,
        host_id: &str,
    ) -> Result<Option<Versioned<HostCertificate>>> {
        self.get_json(&self.keys.host_cert(host_id)).await
    }

    /// Records `cert` as `host_id`'s if the host id is free: no host record and no recorded
    /// certificate. False: the host id is taken (already joined or registered).
    pub async fn claim_host_id(&self, host_id: &str, cert: &HostCertificate) -> Result<bool> {
        let (host, cert_key) = (self.keys.host(host_id), self.keys.host_cert(host_id));
        let txn = Txn::new()
            .when([
                Compare::create_revision(host, CompareOp::Equal, 0),
                Compare::create_revision(cert_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(cert_key, encode(cert), None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Records `cert` for a host that is registered but has no recorded certificate (see
    /// [`CertificateStanding::Unrecorded`]). False: one was recorded meanwhile.
    pub async fn adopt_host_certificate(
        &self,
        host_id: &str,
        cert: &HostCertificate,
    ) -> Result<bool> {
        let cert_key = self.keys.host_cert(host_id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                cert_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(cert_key, encode(cert), None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Stores a re-join token for `host_id`, replacing an unused one.
    pub async fn put_rejoin_token(&self, host_id: &str, token: &RejoinToken) -> Result<()> {
        self.client
            .kv_client()
            .put(self.keys.rejoin_token(host_id), encode(token), None)
            .await?;
        Ok(())
    }

    pub async fn rejoin_token(&self, host_id: &str) -> Result<Option<Versioned<RejoinToken>>> {
        self.get_json(&self.keys.rejoin_token(host_id)).await
    }

    /// Uses the re-join token read at `token_revision`: in one transaction it is deleted,
    /// `cert` becomes the host's certificate and the one it replaces (`previous`, read with
    /// its revision; None if there was none) goes on the deny list. False: the token was used
    /// or replaced, or the host's certificate changed, since they were read.
    pub async fn rejoin_host(
        &self,
        host_id: &str,
        token_revision: i64,
        previous: Option<&Versioned<HostCertificate>>,
        cert: &HostCertificate,
    ) -> Result<bool> {
        let cert_key = self.keys.host_cert(host_id);
        let mut compares = vec![Compare::mod_revision(
            self.keys.rejoin_token(host_id),
            CompareOp::Equal,
            token_revision,
        )];
        let mut ops = vec![
            TxnOp::delete(self.keys.rejoin_token(host_id), None),
            TxnOp::put(cert_key.clone(), encode(cert), None),
        ];
        match previous {
            Some(p) => {
                compares.push(Compare::mod_revision(
                    cert_key,
                    CompareOp::Equal,
                    p.mod_revision,
                ));
                ops.push(self.revoke_op(host_id, &p.value.serial, "replaced by a re-join"));
            }
            None => compares.push(Compare::create_revision(cert_key, CompareOp::Equal, 0)),
        }
        let txn = Txn::new().when(compares).and_then(ops);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    fn revoke_op(&self, host_id: &str, serial: &str, reason: &str) -> TxnOp {
        let entry = RevokedCertificate {
            host_id: host_id.to_string(),
            revoked_at: Utc::now(),
            reason: reason.to_string(),
        };
        TxnOp::put(self.keys.revoked_cert(serial), encode(&entry), None)
    }

    /// Removes a host: its record, liveness, dial failure, recorded certificate and re-join
    /// token go, and its certificate goes on the deny list, in one transaction. Returns the
    /// revoked serial, if a certificate was recorded; Ok(None) also when there was no such host.
    pub async fn remove_host(&self, host_id: &str) -> Result<Option<String>> {
        self.remove_host_with(host_id, |_| Vec::new()).await
    }

    /// [`Store::remove_host`], with the operations `extra` returns in the same transaction;
    /// `extra` gets the serial about to be revoked and may be called again after a conflict.
    pub(crate) async fn remove_host_with(
        &self,
        host_id: &str,
        extra: impl Fn(Option<&str>) -> Vec<TxnOp>,
    ) -> Result<Option<String>> {
        loop {
            let previous = self.host_certificate(host_id).await?;
            let cert_key = self.keys.host_cert(host_id);
            let mut ops = vec![
                TxnOp::delete(self.keys.host(host_id), None),
                TxnOp::delete(self.keys.host_alive(host_id), None),
                TxnOp::delete(self.keys.host_dial(host_id), None),
                TxnOp::delete(cert_key.clone(), None),
                TxnOp::delete(self.keys.rejoin_token(host_id), None),
            ];
            let compare = match &previous {
                Some(p) => {
                    ops.push(self.revoke_op(host_id, &p.value.serial, "host removed"));
                    Compare::mod_revision(cert_key, CompareOp::Equal, p.mod_revision)
                }
                None => Compare::create_revision(cert_key, CompareOp::Equal, 0),
            };
            ops.extend(extra(previous.as_ref().map(|p| p.value.serial.as_str())));
            let txn = Txn::new().when([compare]).and_then(ops);
            if self.client.kv_client().txn(txn).await?.succeeded() {
                return Ok(previous.map(|p| p.value.serial));
            }
            // The host re-joined or adopted a certificate meanwhile: revoke that one instead.
        }
    }

    /// Where a certificate of `host_id` with `serial` stands, from one read.
    pub async fn certificate_standing(
        &self,
        host_id: &str,
        serial: &str,
    ) -> Result<CertificateStanding> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.revoked_cert(serial), None),
            TxnOp::get(self.keys.host_cert(host_id), None),
            TxnOp::get(
                self.keys.host(host_id),
                Some(GetOptions::new().with_keys_only()),
            ),
        ]);
        let resp = self.client.kv_client().txn(txn).await?;
        let mut found = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            _ => None,
        });
        let (revoked, recorded, host) = (
            found.next().flatten(),
            found.next().flatten(),
            found.next().flatten(),
        );
        if revoked.is_some() {
            return Ok(CertificateStanding::Revoked);
        }
        match recorded {
            Some((key, value)) => {
                let cert: HostCertificate = decode(&key, &value)?;
                Ok(if cert.serial == serial {
                    CertificateStanding::Current
                } else {
                    CertificateStanding::NotCurrent
                })
            }
            None if host.is_some() => Ok(CertificateStanding::Unrecorded),
            None => Ok(CertificateStanding::NotCurrent),
        }
    }

    /// The deny list, by serial.
    pub async fn revoked_certificates(&self) -> Result<Vec<(String, RevokedCertificate)>> {
        let prefix = self.keys.revoked_certs();
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let serial = String::from_utf8_lossy(kv.key())
                    .trim_start_matches(&prefix)
                    .to_string();
                Ok((serial, decode(kv.key(), kv.value())?))
            })
            .collect()
    }
}
