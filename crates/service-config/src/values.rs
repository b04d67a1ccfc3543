//! Reading the loosely typed service config. The service catalog validates types before a
//! spec is accepted; these helpers still accept the obvious spellings (`"10"` for 10, a list
//! for a comma-separated string) so that rendering never has to fail.

use serde_json::{Map, Value};

/// A scalar as text; lists are joined with commas, which is how PostgREST spells lists.
pub(crate) fn text(config: &Map<String, Value>, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        other @ Value::Object(_) => Some(other.to_string()),
    }
}

pub(crate) fn integer(config: &Map<String, Value>, key: &str) -> Option<i64> {
    match config.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn boolean(config: &Map<String, Value>, key: &str) -> Option<bool> {
    match config.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `value` as YAML with every map's keys sorted, whatever order the JSON map kept, so the
/// rendered bytes depend only on the content.
pub(crate) fn canonical_yaml(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Null => serde_yaml::Value::Null,
        Value::Bool(b) => serde_yaml::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_yaml::Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                serde_yaml::Value::Number(u.into())
            } else {
                serde_yaml::Value::Number(n.as_f64().unwrap_or(f64::NAN).into())
            }
        }
        Value::String(s) => serde_yaml::Value::String(s.clone()),
        Value::Array(items) => {
            serde_yaml::Value::Sequence(items.iter().map(canonical_yaml).collect())
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_yaml::Mapping::new();
            for k in keys {
                out.insert(
                    serde_yaml::Value::String(k.clone()),
                    canonical_yaml(&map[k]),
                );
            }
            serde_yaml::Value::Mapping(out)
        }
    }
}

/// Every `prefix*` key of `config` without the prefix, plus the keys named in `extra` as
/// they are, sorted; empty when no `prefix*` key is set, since credentials alone configure
/// nothing.
pub(crate) fn section(
    config: &Map<String, Value>,
    prefix: &str,
    extra: &[&str],
) -> serde_yaml::Value {
    let mut entries: Vec<(String, &Value)> = config
        .iter()
        .filter(|(k, v)| k.starts_with(prefix) && !v.is_null())
        .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
        .collect();
    if entries.is_empty() {
        return serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    entries.extend(extra.iter().filter_map(|k| {
        config
            .get(*k)
            .filter(|v| !v.is_null())
            .map(|v| ((*k).to_owned(), v))
    }));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = serde_yaml::Mapping::new();
    for (k, v) in entries {
        out.insert(serde_yaml::Value::String(k), canonical_yaml(v));
    }
    serde_yaml::Value::Mapping(out)
}
