//! SCRAM-SHA-256 password verifiers as Postgres stores them, so role passwords reach
//! Postgres already hashed: `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'` stores the verifier
//! as given, and a failing statement that Postgres logs shows no password.
//!
//! The format is Postgres's (`src/common/scram-common.c`, `scram_build_secret`):
//! `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`, with the
//! keys of RFC 5802 section 3 over SHA-256 (RFC 7677):
//!
//! - SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations), 32 bytes
//! - ClientKey = HMAC(SaltedPassword, "Client Key"); StoredKey = SHA-256(ClientKey)
//! - ServerKey = HMAC(SaltedPassword, "Server Key")
//!
//! Postgres runs the password through SASLprep (RFC 4013) first. Generated passwords are
//! ASCII letters and digits, which SASLprep leaves as they are, so none is applied here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Postgres's default (`SCRAM_SHA_256_DEFAULT_ITERATIONS`, `scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Postgres's salt length in bytes (`SCRAM_DEFAULT_SALT_LEN`).
pub const SALT_LEN: usize = 16;

/// A verifier for `password` with a fresh random 16-byte salt and 4096 iterations.
pub fn verifier(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    verifier_with(password, &salt, DEFAULT_ITERATIONS)
}

/// A verifier for `password` with the given salt and iteration count.
pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's exchange: user "user", password "pencil".
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const AUTH_MESSAGE: &str = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
        r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
        c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    /// The client's proof (`p=`) and the server's signature (`v=`) of that exchange.
    const CLIENT_PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// A server holding our verifier accepts the RFC's client proof and answers with the
    /// RFC's server signature (RFC 5802 section 3: ClientKey = proof XOR
    /// HMAC(StoredKey, AuthMessage), and SHA-256(ClientKey) must be StoredKey).
    #[test]
    fn the_verifier_authenticates_rfc_7677s_exchange() {
        let salt = STANDARD.decode(SALT).unwrap();
        let v = verifier_with("pencil", &salt, 4096);
        let (head, keys) = v.rsplit_once('$').unwrap();
        assert_eq!(head, format!("SCRAM-SHA-256$4096:{SALT}"));
        let (stored, server) = keys.split_once(':').unwrap();
        let (stored, server) = (
            STANDARD.decode(stored).unwrap(),
            STANDARD.decode(server).unwrap(),
        );
        let signature = hmac_sha256(&server, AUTH_MESSAGE.as_bytes());
        assert_eq!(STANDARD.encode(signature), SERVER_SIGNATURE);
        let client_signature = hmac_sha256(&stored, AUTH_MESSAGE.as_bytes());
        let proof = STANDARD.decode(CLIENT_PROOF).unwrap();
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
        // The same verifier, computed independently (Python's hashlib and hmac).
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn each_verifier_has_a_fresh_salt_and_no_password() {
        let (a, b) = (verifier("secretpw"), verifier("secretpw"));
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$4096:") && !a.contains("secretpw"));
        let salt = a.split(['$', ':']).nth(2).unwrap();
        assert_eq!(STANDARD.decode(salt).unwrap().len(), SALT_LEN);
    }
}
