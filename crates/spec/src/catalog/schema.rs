//! JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) of each service type's `config`,
//! generated from its field table, for the OpenAPI document.
//!
//! What a schema cannot say (conditional requirements, "only allowed when", a pipeline name
//! not repeating) is in each property's description; the validator enforces all of it.

use serde_json::{Map, Value, json};

use super::fields::{Cond, Field, Format, Kind};
use crate::ServiceType;

/// What a string [`Format`] means for a form: a name, an ECMA-262 pattern (what JSON Schema
/// uses) equivalent to the validator's rule, and a maximum length in characters.
pub struct FormatFacts {
    pub name: Option<&'static str>,
    pub pattern: Option<&'static str>,
    pub max_chars: Option<usize>,
}

/// The facts of `format`. The patterns restate the rules of [`crate::ident`] (a unit test
/// checks them against the validator on sample names); the URL's only checks its start, and
/// a role's does not refuse the reserved `pg_` prefix.
pub fn format_facts(format: Format) -> FormatFacts {
    const PG_IDENT: &str = "^[a-z_][a-z0-9_]*$";
    let (name, pattern, max_chars) = match format {
        Format::Plain => (None, None, None),
        Format::HttpUrl => (Some("uri"), Some("^https?://[^\\s/:@]"), None),
        Format::Id => (Some("id"), Some("^[a-z0-9]+(-[a-z0-9]+)*$"), Some(36)),
        Format::PgIdentifier => (Some("postgres-identifier"), Some(PG_IDENT), Some(63)),
        // The pattern cannot say "not pg_" without a lookahead, which not every engine has;
        // the description says it.
        Format::PgRole => (Some("postgres-role"), Some(PG_IDENT), Some(63)),
        Format::TableName => (
            Some("postgres-table"),
            Some("^[a-z_][a-z0-9_]{0,62}(\\.[a-z_][a-z0-9_]{0,62})?$"),
            Some(127),
        ),
    };
    FormatFacts {
        name,
        pattern,
        max_chars,
    }
}

/// The JSON Schema of a service type's `config`.
pub fn config_schema(service_type: ServiceType) -> Value {
    let rules = super::rules(service_type);
    let mut schema = object_schema(rules.fields);
    schema["description"] = Value::String(format!(
        "The config of a `{service_type}` service: {}",
        rules.summary
    ));
    schema
}

fn object_schema(fields: &[Field]) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name.to_string(), field_schema(f)))
        .collect();
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// "Required when `a` is x or `b` is y."
pub(crate) fn conditions_text(f: &Field) -> String {
    let mut text = String::new();
    if !f.required_when.is_empty() {
        let conds: Vec<String> = f.required_when.iter().map(cond_text).collect();
        text.push_str(&format!("Required when {}.", conds.join(" or ")));
    }
    if let Some(cond) = &f.allowed_when {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&format!("Allowed only when {}.", cond_text(cond)));
    }
    text
}

fn cond_text(c: &Cond) -> String {
    let values: Vec<String> = c.values.iter().map(|l| l.display()).collect();
    format!("`{}` is {}", c.field, values.join(" or "))
}

fn field_schema(f: &Field) -> Value {
    let mut schema = kind_schema(&f.kind);
    let conditions = conditions_text(f);
    let description = if conditions.is_empty() {
        f.description.to_string()
    } else {
        format!("{} {conditions}", f.description)
    };
    schema["description"] = Value::String(description);
    if let Some(default) = f.default {
        schema["default"] = default.to_value();
    }
    if let Some(example) = f.example {
        schema["examples"] = json!([example.to_value()]);
    }
    if f.is_secret() {
        // Never returned by the API: OpenAPI's mark for a value only ever sent.
        schema["writeOnly"] = Value::Bool(true);
    }
    schema
}

fn string_schema(min_chars: usize, format: Format) -> Value {
    let facts = format_facts(format);
    let mut schema = json!({"type": "string"});
    if min_chars > 0 {
        schema["minLength"] = json!(min_chars);
    }
    if let Some(max) = facts.max_chars {
        schema["maxLength"] = json!(max);
    }
    if let Some(pattern) = facts.pattern {
        schema["pattern"] = json!(pattern);
    }
    if format == Format::HttpUrl {
        schema["format"] = json!("uri");
    }
    schema
}

fn kind_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int { min, max } => {
            let mut schema = json!({"type": "integer", "format": "int64", "minimum": min});
            if *max != i64::MAX {
                schema["maximum"] = json!(max);
            }
            schema
        }
        Kind::Number { min, max } => json!({"type": "number", "minimum": min, "maximum": max}),
        Kind::String { min_chars, format } => string_schema(*min_chars, *format),
        Kind::Enum(values) => json!({"type": "string", "enum": values}),
        Kind::SchemaList => json!({
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "uniqueItems": true,
                 "items": string_schema(1, Format::PgIdentifier)},
            ]
        }),
        Kind::Object(fields) => object_schema(fields),
        Kind::Objects { fields, .. } => json!({
            "type": "array",
            "minItems": 1,
            "items": object_schema(fields),
        }),
    }
}
