//! A config built from nothing but a service type's description ([`super::describe`]), the way
//! a form or the CLI would fill one in: required keys, then every key a condition requires, each
//! with its example, its default, its first allowed value or its minimum. Tests submit what it
//! builds to prove the catalog says enough to pass validation.

use serde_json::{Map, Value};

use super::describe::{ConfigField, FieldCondition, FieldType};

/// A config for these fields. With `switch_on`, every boolean the fields allow is set to
/// `true` first, so the keys that features require are filled in too.
pub fn example_config(fields: &[ConfigField], switch_on: bool) -> Map<String, Value> {
    let mut config = Map::new();
    for f in fields.iter().filter(|f| f.required) {
        config.insert(f.name.clone(), example_value(f, switch_on));
    }
    if switch_on {
        for f in fields.iter().filter(|f| f.field_type == FieldType::Boolean) {
            if allowed(f, fields, &config) {
                config.insert(f.name.clone(), Value::Bool(true));
            }
        }
    }
    // Each key added may make another required: add until nothing changes.
    loop {
        let wanted: Vec<&ConfigField> = fields
            .iter()
            .filter(|f| !config.contains_key(&f.name))
            .filter(|f| f.required_when.iter().any(|c| holds(c, fields, &config)))
            .filter(|f| allowed(f, fields, &config))
            .collect();
        if wanted.is_empty() {
            return config;
        }
        for f in wanted {
            config.insert(f.name.clone(), example_value(f, switch_on));
        }
    }
}

fn allowed(f: &ConfigField, fields: &[ConfigField], config: &Map<String, Value>) -> bool {
    f.allowed_when
        .as_ref()
        .is_none_or(|c| holds(c, fields, config))
}

/// Whether `c` holds in `config`, an absent key reading as its default.
fn holds(c: &FieldCondition, fields: &[ConfigField], config: &Map<String, Value>) -> bool {
    let value = config.get(&c.field).cloned().or_else(|| {
        fields
            .iter()
            .find(|f| f.name == c.field)
            .and_then(|f| f.default.clone())
    });
    value.is_some_and(|v| c.values.contains(&v))
}

fn example_value(f: &ConfigField, switch_on: bool) -> Value {
    if let Some(v) = f.example.clone().or_else(|| f.default.clone()) {
        return v;
    }
    if let Some(first) = f.allowed_values.as_ref().and_then(|v| v.first()) {
        return Value::String(first.clone());
    }
    match f.field_type {
        FieldType::Boolean => Value::Bool(switch_on),
        FieldType::Integer => Value::from(f.minimum.unwrap_or(0.0) as i64),
        FieldType::Number => Value::from(f.minimum.unwrap_or(0.0)),
        FieldType::Object => Value::Object(example_config(&f.fields, switch_on)),
        FieldType::Array => Value::Array(vec![Value::Object(example_config(&f.fields, switch_on))]),
        // A field with neither example nor default: the catalog's own test refuses that for
        // any field a config may need.
        FieldType::String | FieldType::StringOrArray => Value::String(String::new()),
    }
}
