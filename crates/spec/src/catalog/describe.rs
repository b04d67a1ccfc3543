//! The catalog as `GET /v1/service-types` serves it: per service type its versions (from the
//! version manifest), its config fields and the defaults it applies, read from the same field
//! tables the validator checks against ([`super::fields`]), so a form built from it cannot
//! drift from validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fields::{Cond, Field, Kind};
use super::schema::{conditions_text, format_facts};
use crate::{Manifest, ServiceType, TargetSessionAttrs};

/// `GET /v1/service-types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListServiceTypesResponse {
    pub service_types: Vec<ServiceTypeInfo>,
}

/// One service type a spec's `services[].service_type` may name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceTypeInfo {
    pub service_type: ServiceType,
    pub description: String,
    /// Every version the manifest lists, ascending; `services[].version` may name one, a
    /// prefix of one (`1.0` = the highest `1.0.x`), or `latest`.
    pub versions: Vec<ServiceVersionInfo>,
    /// The keys of `services[].config`. Unknown keys are refused.
    pub config_fields: Vec<ConfigField>,
    pub defaults: ServiceDefaults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceVersionInfo {
    pub version: String,
    /// Whether `latest` stands for this version.
    pub latest: bool,
}

/// JSON types of a config field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Boolean,
    Integer,
    Number,
    String,
    /// A string, or an array of strings (`db_schemas`).
    StringOrArray,
    Object,
    Array,
}

/// "`field` (a sibling key) holds one of `values`".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldCondition {
    pub field: String,
    #[schema(value_type = Vec<Object>)]
    pub values: Vec<Value>,
}

/// One key of a config object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(no_recursion)]
pub struct ConfigField {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// What it sets, and the conditions below in words.
    pub description: String,
    /// Required whatever else the config holds.
    pub required: bool,
    /// Required when any of these holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_when: Vec<FieldCondition>,
    /// Refused unless this holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_when: Option<FieldCondition>,
    /// Never returned by the API, kept sealed at rest; an update that leaves it out keeps it.
    pub secret: bool,
    /// The value the service runs with when the key is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub example: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// In characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// In characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// `uri`, `id`, `postgres-identifier`, `postgres-role`, `postgres-table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// An ECMA-262 regular expression the value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// For `array`: the least number of elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_items: Option<usize>,
    /// For `array` (of objects): a key whose value may not repeat across elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// For `object`, and `array` of objects: the keys of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<ConfigField>,
}

/// What a service of this type gets when its spec leaves things out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceDefaults {
    /// Top-level config keys and the values the service runs with when they are absent.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    pub database_connection: ConnectionDefaults,
}

/// The defaults of `services[].database_connection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionDefaults {
    /// Used when no `target_session_attrs_when` entry applies.
    pub target_session_attrs: TargetSessionAttrs,
    /// Checked in order against the effective config; the first that holds wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_session_attrs_when: Vec<ConditionalSessionAttrs>,
    /// In words: every node of the database, the one local to the service's host first.
    pub target_nodes: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConditionalSessionAttrs {
    pub when: FieldCondition,
    pub target_session_attrs: TargetSessionAttrs,
}

/// Every service type the validator accepts, with the versions `manifest` lists for it.
pub fn describe(manifest: &Manifest) -> Vec<ServiceTypeInfo> {
    ServiceType::ALL
        .into_iter()
        .map(|t| describe_type(t, manifest))
        .collect()
}

fn describe_type(service_type: ServiceType, manifest: &Manifest) -> ServiceTypeInfo {
    let rules = super::rules(service_type);
    let latest = manifest.default_service_version(service_type);
    let versions = manifest
        .service_versions(service_type)
        .into_iter()
        .map(|version| ServiceVersionInfo {
            latest: latest.as_deref() == Some(version.as_str()),
            version,
        })
        .collect();
    let config = rules
        .fields
        .iter()
        .filter_map(|f| Some((f.name.to_string(), f.default?.to_value())))
        .collect();
    ServiceTypeInfo {
        service_type,
        description: rules.summary.to_string(),
        versions,
        config_fields: rules.fields.iter().map(describe_field).collect(),
        defaults: ServiceDefaults {
            config,
            database_connection: ConnectionDefaults {
                target_session_attrs: rules.session_attrs.default,
                target_session_attrs_when: rules
                    .session_attrs
                    .when
                    .iter()
                    .map(|(cond, attrs)| ConditionalSessionAttrs {
                        when: condition(cond),
                        target_session_attrs: *attrs,
                    })
                    .collect(),
                target_nodes:
                    "every node of the database, the node local to the service's host first"
                        .to_string(),
            },
        },
    }
}

fn condition(c: &Cond) -> FieldCondition {
    FieldCondition {
        field: c.field.to_string(),
        values: c.values.iter().map(|l| l.to_value()).collect(),
    }
}

fn describe_field(f: &Field) -> ConfigField {
    let conditions = conditions_text(f);
    let mut out = ConfigField {
        name: f.name.to_string(),
        field_type: FieldType::String,
        description: if conditions.is_empty() {
            f.description.to_string()
        } else {
            format!("{} {conditions}", f.description)
        },
        required: f.required,
        required_when: f.required_when.iter().map(condition).collect(),
        allowed_when: f.allowed_when.as_ref().map(condition),
        secret: f.is_secret(),
        default: f.default.map(|l| l.to_value()),
        example: f.example.map(|l| l.to_value()),
        allowed_values: None,
        minimum: None,
        maximum: None,
        min_length: None,
        max_length: None,
        format: None,
        pattern: None,
        min_items: None,
        unique_key: None,
        fields: Vec::new(),
    };
    match f.kind {
        Kind::Bool => out.field_type = FieldType::Boolean,
        Kind::Int { min, max } => {
            out.field_type = FieldType::Integer;
            out.minimum = Some(min as f64);
            out.maximum = (max != i64::MAX).then_some(max as f64);
        }
        Kind::Number { min, max } => {
            out.field_type = FieldType::Number;
            out.minimum = Some(min);
            out.maximum = Some(max);
        }
        Kind::String { min_chars, format } => {
            let facts = format_facts(format);
            out.min_length = (min_chars > 0).then_some(min_chars);
            out.max_length = facts.max_chars;
            out.format = facts.name.map(str::to_string);
            out.pattern = facts.pattern.map(str::to_string);
        }
        Kind::Enum(values) => {
            out.allowed_values = Some(values.iter().map(|v| v.to_string()).collect());
        }
        Kind::SchemaList => {
            out.field_type = FieldType::StringOrArray;
            out.format = Some("postgres-identifier".to_string());
            out.min_items = Some(1);
        }
        Kind::Object(fields) => {
            out.field_type = FieldType::Object;
            out.fields = fields.iter().map(describe_field).collect();
        }
        Kind::Objects { fields, unique, .. } => {
            out.field_type = FieldType::Array;
            out.min_items = Some(1);
            out.unique_key = unique.map(str::to_string);
            out.fields = fields.iter().map(describe_field).collect();
        }
    }
    out
}
