//! Secret config values sealed with AES-256-GCM before they reach etcd.
//!
//! A sealed value replaces the plain one in place as `{"$sealed": "<base64 nonce||ciphertext>"}`,
//! so the document keeps its shape and opening does not need to know which keys were secret.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use std::path::Path;

const SEALED: &str = "$sealed";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} must hold exactly 32 bytes, it holds {len}")]
    KeyLength { path: String, len: usize },
    #[error("a sealed value could not be opened (wrong key file or corrupted data)")]
    Open,
    #[error("a sealed value is not valid base64")]
    Encoding,
}

/// The key that seals secrets at rest.
#[derive(Clone)]
pub struct SecretBox {
    // Shared: every request handler holds a clone of the store, and an AES key schedule is
    // worth not copying per request (it showed in the API's profile).
    cipher: std::sync::Arc<Aes256Gcm>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: std::sync::Arc::new(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))),
        }
    }

    /// Reads the key file, creating it with a fresh random key (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let err = |source| SealError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SealError::KeyLength {
                            path: path.display().to_string(),
                            len: bytes.len(),
                        })?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                let key: [u8; 32] = rand::random();
                match publish_private(path, &key) {
                    Ok(()) => Ok(Self::from_key(key)),
                    // Another process published its key first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path)
                    }
                    Err(e) => Err(err(e)),
                }
            }
            Err(e) => Err(err(e)),
        }
    }

    fn seal_value(&self, value: &Value) -> Value {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let plain = serde_json::to_vec(value).expect("a JSON value serializes");
        let mut out = nonce_bytes.to_vec();
        out.extend(
            self.cipher
                .encrypt(Nonce::from_slice(&nonce_bytes), plain.as_slice())
                .expect("AES-GCM encryption of an in-memory buffer cannot fail"),
        );
        let mut m = Map::new();
        m.insert(SEALED.into(), Value::String(STANDARD.encode(out)));
        Value::Object(m)
    }

    fn open_value(&self, sealed: &str) -> Result<Value, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Encoding)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Open)
    }

    /// Seals a whole document into one sealed value.
    pub fn seal_document(&self, value: &Value) -> Value {
        self.seal_value(value)
    }

    /// Opens a document sealed with [`SecretBox::seal_document`].
    pub fn open_document(&self, value: &Value) -> Result<Value, SealError> {
        let text = sealed_text(value).ok_or(SealError::Open)?;
        self.open_value(&text)
    }

    /// Seals, recursively, every value whose key `is_secret` says is secret.
    pub fn seal(&self, config: &mut Map<String, Value>, is_secret: &dyn Fn(&str) -> bool) {
        for (key, value) in config.iter_mut() {
            if is_secret(key) && !is_sealed(value) {
                *value = self.seal_value(value);
            } else {
                self.seal_nested(value, is_secret);
            }
        }
    }

    fn seal_nested(&self, value: &mut Value, is_secret: &dyn Fn(&str) -> bool) {
        match value {
            Value::Object(m) => self.seal(m, is_secret),
            Value::Array(items) => items
                .iter_mut()
                .for_each(|v| self.seal_nested(v, is_secret)),
            _ => {}
        }
    }

    /// Opens every sealed value, wherever it is.
    pub fn open(&self, config: &mut Map<String, Value>) -> Result<(), SealError> {
        for value in config.values_mut() {
            self.open_nested(value)?;
        }
        Ok(())
    }

    fn open_nested(&self, value: &mut Value) -> Result<(), SealError> {
        if let Some(sealed) = sealed_text(value) {
            *value = self.open_value(&sealed)?;
            return Ok(());
        }
        match value {
            Value::Object(m) => self.open(m),
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.open_nested(v)),
            _ => Ok(()),
        }
    }
}

fn sealed_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(m) if m.len() == 1 => {
            m.get(SEALED).and_then(Value::as_str).map(str::to_owned)
        }
        _ => None,
    }
}

fn is_sealed(value: &Value) -> bool {
    sealed_text(value).is_some()
}

/// Writes the key under a private temporary name, then links it into place only if no key
/// is there yet: a process starting at the same moment never reads a half-written key, and
/// two processes never end up with different keys.
#[cfg(unix)]
fn publish_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(k: &str) -> bool {
        k.contains("api_key")
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_plain_text() {
        let b = SecretBox::from_key([7; 32]);
        let original = json!({"llm_model": "m", "anthropic_api_key": "sk-plain", "nested": [{"openai_api_key": "sk-2"}]});
        let mut m = original.as_object().unwrap().clone();
        b.seal(&mut m, &secret);
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            !text.contains("sk-plain") && !text.contains("sk-2"),
            "{text}"
        );
        assert!(text.contains("\"llm_model\":\"m\""));
        b.seal(&mut m, &secret); // sealing twice does not double-wrap
        b.open(&mut m).unwrap();
        assert_eq!(Value::Object(m), original);
    }

    #[test]
    fn opening_with_another_key_fails() {
        let mut m = json!({"x_api_key": "s"}).as_object().unwrap().clone();
        SecretBox::from_key([1; 32]).seal(&mut m, &secret);
        assert!(matches!(
            SecretBox::from_key([2; 32]).open(&mut m),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn replicas_starting_together_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let boxes: Vec<SecretBox> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SecretBox::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut m = json!({"k_api_key": "v"}).as_object().unwrap().clone();
        boxes[0].seal(&mut m, &secret);
        for b in &boxes[1..] {
            let mut copy = m.clone();
            b.open(&mut copy).unwrap();
            assert_eq!(copy["k_api_key"], "v");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let a = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = SecretBox::load_or_create(&path).unwrap();
        let mut m = json!({"k_api_key": "v"}).as_object().unwrap().clone();
        a.seal(&mut m, &secret);
        b.open(&mut m).unwrap();
        assert_eq!(m["k_api_key"], "v");
    }
}
