//! Small helpers shared by the request parser and the catalog: reading typed fields out of
//! untyped JSON while collecting every error with its path, instead of stopping at the first.
//!
//! Convention: a JSON `null` reads as "absent", the way serde reads `Option` fields.

use serde_json::{Map, Value};

use crate::FieldError;

/// The errors found so far in one request.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `base.key`, or `key` at the root.
pub(crate) fn field(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// `base[i]`.
pub(crate) fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// A JSON value's kind, for "expected X, got Y" style messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read, with its path.
pub(crate) struct Obj<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: String,
}

impl<'a> Obj<'a> {
    /// Reads `v` as an object, or records that one was expected.
    pub(crate) fn of(v: &'a Value, path: String, errors: &mut Errors) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj { map, path }),
            other => {
                errors.push(path, format!("expected an object, got {}", kind(other)));
                None
            }
        }
    }

    pub(crate) fn at(&self, key: &str) -> String {
        field(&self.path, key)
    }

    /// Rejects every key not in `allowed`, naming the allowed ones.
    pub(crate) fn deny_unknown(&self, allowed: &[&str], errors: &mut Errors) {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                errors.push(
                    self.at(key),
                    format!("unknown field; allowed: {}", allowed.join(", ")),
                );
            }
        }
    }

    /// The value under `key`, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn require(&self, key: &str, errors: &mut Errors) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            errors.push(self.at(key), "is required");
        }
        v
    }

    pub(crate) fn str(&self, key: &str, errors: &mut Errors) -> Option<&'a str> {
        let v = self.get(key)?;
        expect_str(v, &self.at(key), errors)
    }

    /// A string that must be present and non-empty.
    pub(crate) fn req_str(&self, key: &str, errors: &mut Errors) -> Option<&'a str> {
        let v = self.require(key, errors)?;
        let s = expect_str(v, &self.at(key), errors)?;
        if s.is_empty() {
            errors.push(self.at(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A string among `allowed`.
    pub(crate) fn one_of(
        &self,
        key: &str,
        allowed: &[&'static str],
        errors: &mut Errors,
    ) -> Option<&'static str> {
        let s = self.str(key, errors)?;
        match allowed.iter().find(|a| **a == s) {
            Some(a) => Some(a),
            None => {
                errors.push(
                    self.at(key),
                    format!("expected one of: {}", allowed.join(", ")),
                );
                None
            }
        }
    }

    pub(crate) fn array(&self, key: &str, errors: &mut Errors) -> Option<&'a Vec<Value>> {
        match self.get(key)? {
            Value::Array(a) => Some(a),
            other => {
                errors.push(
                    self.at(key),
                    format!("expected an array, got {}", kind(other)),
                );
                None
            }
        }
    }

    pub(crate) fn object(&self, key: &str, errors: &mut Errors) -> Option<Obj<'a>> {
        Obj::of(self.get(key)?, self.at(key), errors)
    }
}

pub(crate) fn expect_str<'a>(v: &'a Value, path: &str, errors: &mut Errors) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            errors.push(path, format!("expected a string, got {}", kind(other)));
            None
        }
    }
}

pub(crate) fn expect_int(
    v: &Value,
    path: &str,
    lo: i64,
    hi: i64,
    errors: &mut Errors,
) -> Option<i64> {
    match v.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => Some(n),
        _ => {
            let expected = if hi == i64::MAX {
                format!("expected an integer of at least {lo}")
            } else {
                format!("expected an integer from {lo} to {hi}")
            };
            errors.push(path, expected);
            None
        }
    }
}

/// Whether `s` is an `http://` or `https://` URL with a host and no whitespace.
pub(crate) fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or("");
            !host.is_empty()
                && !host.starts_with(':')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        for ok in [
            "http://ollama:11434",
            "https://example.com/v1",
            "http://10.0.0.1:11434/",
            "http://u:p@h",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "http://",
            "https:///path",
            "http://:80",
            "ollama:11434",
            "http://a b",
            "HTTP//x",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(field("", "id"), "id");
        assert_eq!(field("spec", "nodes"), "spec.nodes");
        assert_eq!(index("spec.nodes", 2), "spec.nodes[2]");
    }
}
