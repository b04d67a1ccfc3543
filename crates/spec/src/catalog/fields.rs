//! The field table a service type's `config` is checked against, and the checks that read it.
//!
//! One table per service type ([`super::ServiceRules::fields`]) says every key: its kind, its
//! bounds, whether it is required (always, or when another key holds some value), when it is
//! allowed at all, its default and an example. Validation ([`check_object`]) and the catalog
//! that `GET /v1/service-types` serves ([`super::describe`]) both read it, so a form built from
//! the catalog cannot drift from what the validator accepts.
//!
//! Conditions name a sibling key of the same object. A key that is present but not allowed
//! (its `allowed_when` does not hold) counts as absent for the conditions of other keys, and a
//! key that is present with a value of the wrong kind makes the conditions on it unknown: the
//! rules that depend on it are skipped rather than piling guesses onto its own error.

use serde_json::{Map, Value};

use crate::check::{Errors, Obj, expect_int, expect_str, index, is_http_url, kind};
use crate::ident::{validate_id, validate_pg_identifier};

/// A literal a condition compares a key's value with, or a default or example value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lit {
    Bool(bool),
    Int(i64),
    Str(&'static str),
}

impl Lit {
    pub fn to_value(self) -> Value {
        match self {
            Lit::Bool(b) => Value::Bool(b),
            Lit::Int(i) => Value::from(i),
            Lit::Str(s) => Value::String(s.to_string()),
        }
    }

    /// How a message names the value: `true`, `10`, `anthropic` (no quotes).
    pub fn display(self) -> String {
        match self {
            Lit::Bool(b) => b.to_string(),
            Lit::Int(i) => i.to_string(),
            Lit::Str(s) => s.to_string(),
        }
    }
}

/// "`field` holds one of `values`", where `field` is a sibling key in the same object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cond {
    pub field: &'static str,
    pub values: &'static [Lit],
}

impl Cond {
    pub const fn new(field: &'static str, values: &'static [Lit]) -> Cond {
        Cond { field, values }
    }
}

/// What a string must look like beyond its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Any string.
    Plain,
    /// An `http://` or `https://` URL with a host.
    HttpUrl,
    /// A berth id ([`crate::ident::validate_id`]).
    Id,
    /// A Postgres identifier ([`crate::ident::validate_pg_identifier`]).
    PgIdentifier,
    /// A Postgres identifier that is not reserved for Postgres' own roles (`pg_*`).
    PgRole,
    /// `table` or `schema.table`, each part a Postgres identifier.
    TableName,
}

/// The kind of value a key holds, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Bool,
    /// An integer within `min..=max` (`i64::MAX` for "no upper bound").
    Int {
        min: i64,
        max: i64,
    },
    /// A number, integer or not, within `min..=max`.
    Number {
        min: f64,
        max: f64,
    },
    /// A string of at least `min_chars` characters (`1`: not empty).
    String {
        min_chars: usize,
        format: Format,
    },
    /// A string among these.
    Enum(&'static [&'static str]),
    /// Schema names: one Postgres identifier, a comma-separated list of them (PostgREST's own
    /// syntax), or an array of them; at least one, none twice.
    SchemaList,
    /// An object with exactly these keys.
    Object(&'static [Field]),
    /// A non-empty array of objects with these keys; `noun` names one in messages, and the
    /// value of the `unique` key, when set, may not repeat.
    Objects {
        fields: &'static [Field],
        noun: &'static str,
        unique: Option<&'static str>,
    },
}

/// One key of a config object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Required whatever else the object holds.
    pub required: bool,
    /// Required when any of these holds.
    pub required_when: &'static [Cond],
    /// Allowed only when this holds.
    pub allowed_when: Option<Cond>,
    /// The value a service runs with when the key is absent (applied by
    /// [`super::apply_defaults`]; the stored spec keeps what the user wrote).
    pub default: Option<Lit>,
    /// A valid value, for documentation and for forms that need a placeholder.
    pub example: Option<Lit>,
    pub description: &'static str,
}

impl Field {
    /// An optional key of `kind` with no conditions, default or example.
    pub const fn new(name: &'static str, kind: Kind, description: &'static str) -> Field {
        Field {
            name,
            kind,
            required: false,
            required_when: &[],
            allowed_when: None,
            default: None,
            example: None,
            description,
        }
    }

    pub const fn required(self) -> Field {
        Field {
            required: true,
            ..self
        }
    }

    pub const fn required_when(self, conds: &'static [Cond]) -> Field {
        Field {
            required_when: conds,
            ..self
        }
    }

    pub const fn allowed_when(self, cond: Cond) -> Field {
        Field {
            allowed_when: Some(cond),
            ..self
        }
    }

    pub const fn default(self, value: Lit) -> Field {
        Field {
            default: Some(value),
            ..self
        }
    }

    pub const fn example(self, value: Lit) -> Field {
        Field {
            example: Some(value),
            ..self
        }
    }

    /// Whether the key holds a secret ([`super::is_secret_key`]).
    pub fn is_secret(&self) -> bool {
        super::is_secret_key(self.name)
    }
}

/// A string kind that must not be empty.
pub const fn text(format: Format) -> Kind {
    Kind::String {
        min_chars: 1,
        format,
    }
}

/// Every error in `o` against `fields`: unknown keys, then each key's kind and bounds in table
/// order, then the conditional rules in table order.
pub(crate) fn check_object(o: &Obj<'_>, fields: &[Field], e: &mut Errors) {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    o.deny_unknown(&names, e);
    for f in fields {
        let value = if f.required {
            o.require(f.name, e)
        } else {
            o.get(f.name)
        };
        if let Some(v) = value {
            check_value(v, &o.at(f.name), &f.kind, e);
        }
    }
    for f in fields {
        if o.has(f.name) {
            if let Some(cond) = &f.allowed_when
                && holds(o, fields, cond) == Some(false)
            {
                e.push(
                    o.at(f.name),
                    format!(
                        "is only allowed when {} is {}",
                        cond.field,
                        cond_values(cond)
                    ),
                );
            }
        } else if let Some((cond, value)) = f
            .required_when
            .iter()
            .find_map(|c| matching(o, fields, c).map(|v| (c, v)))
        {
            e.push(
                o.at(f.name),
                format!("is required when {} is {}", cond.field, value.display()),
            );
        }
    }
}

fn cond_values(cond: &Cond) -> String {
    let values: Vec<String> = cond.values.iter().map(|l| l.display()).collect();
    values.join(" or ")
}

/// Whether `v` is a valid value of `kind`, without recording why not.
fn is_valid(v: &Value, kind: &Kind) -> bool {
    let mut scratch = Errors::default();
    check_value(v, "", kind, &mut scratch);
    scratch.is_empty()
}

/// The field of `fields` named `name`; a table's conditions only name its own keys (a unit
/// test checks every table).
fn field<'f>(fields: &'f [Field], name: &str) -> Option<&'f Field> {
    fields.iter().find(|f| f.name == name)
}

/// The value a key is read as for conditions: what was given when it is valid and allowed,
/// else its default. `Err(())` when that cannot be known (wrong kind, or the rule allowing it
/// is itself unknown).
fn effective(o: &Obj<'_>, fields: &[Field], name: &str) -> Result<Option<Value>, ()> {
    let Some(f) = field(fields, name) else {
        return Ok(None);
    };
    let allowed = match &f.allowed_when {
        Some(cond) => holds(o, fields, cond).ok_or(())?,
        None => true,
    };
    match o.get(name) {
        Some(v) if allowed => {
            if is_valid(v, &f.kind) {
                Ok(Some(v.clone()))
            } else {
                Err(())
            }
        }
        _ => Ok(f.default.map(Lit::to_value)),
    }
}

/// Whether `cond` holds in `o`: `None` when that cannot be known.
fn holds(o: &Obj<'_>, fields: &[Field], cond: &Cond) -> Option<bool> {
    let value = effective(o, fields, cond.field).ok()?;
    Some(value.is_some_and(|v| cond.values.iter().any(|l| l.to_value() == v)))
}

/// The literal of `cond` the key holds, when the condition is known to hold.
fn matching(o: &Obj<'_>, fields: &[Field], cond: &Cond) -> Option<Lit> {
    let value = effective(o, fields, cond.field).ok()??;
    cond.values.iter().copied().find(|l| l.to_value() == value)
}

/// Whether `cond` holds in `map`, read against `fields` (for rules outside validation, such
/// as which `target_session_attrs` a service gets). Unknown reads as false.
pub(crate) fn holds_in(map: &Map<String, Value>, fields: &[Field], cond: &Cond) -> bool {
    let o = Obj {
        map,
        path: String::new(),
    };
    holds(&o, fields, cond) == Some(true)
}

/// Records every error of `v` against `kind` under `path`.
fn check_value(v: &Value, path: &str, kind: &Kind, e: &mut Errors) {
    match kind {
        Kind::Bool => {
            if !v.is_boolean() {
                e.push(
                    path,
                    format!("expected true or false, got {}", crate::check::kind(v)),
                );
            }
        }
        Kind::Int { min, max } => {
            expect_int(v, path, *min, *max, e);
        }
        Kind::Number { min, max } => match v.as_f64() {
            Some(n) if (*min..=*max).contains(&n) => {}
            _ => e.push(path, format!("expected a number from {min} to {max}")),
        },
        Kind::String { min_chars, format } => {
            if let Some(s) = expect_str(v, path, e) {
                check_string(s, path, *min_chars, *format, e);
            }
        }
        Kind::Enum(allowed) => {
            if let Some(s) = expect_str(v, path, e)
                && !allowed.contains(&s)
            {
                e.push(path, format!("expected one of: {}", allowed.join(", ")));
            }
        }
        Kind::SchemaList => check_schema_list(v, path, e),
        Kind::Object(fields) => {
            if let Some(o) = Obj::of(v, path.to_string(), e) {
                check_object(&o, fields, e);
            }
        }
        Kind::Objects {
            fields,
            noun,
            unique,
        } => check_objects(v, path, fields, noun, *unique, e),
    }
}

fn check_string(s: &str, path: &str, min_chars: usize, format: Format, e: &mut Errors) {
    if min_chars == 1 && s.is_empty() {
        e.push(path, "must not be empty");
        return;
    }
    if min_chars > 1 && s.chars().count() < min_chars {
        e.push(path, format!("must be at least {min_chars} characters"));
        return;
    }
    let problem = match format {
        Format::Plain => None,
        Format::HttpUrl => {
            (!is_http_url(s)).then(|| "expected an http:// or https:// URL".to_string())
        }
        Format::Id => validate_id(s).err(),
        Format::PgIdentifier => validate_pg_identifier(s).err(),
        Format::PgRole => validate_pg_identifier(s).err().or_else(|| {
            s.starts_with("pg_")
                .then(|| "role names starting with \"pg_\" are reserved by Postgres".to_string())
        }),
        Format::TableName => table_name_problem(s),
    };
    if let Some(message) = problem {
        e.push(path, message);
    }
}

/// `table` or `schema.table`, each part a Postgres identifier.
fn table_name_problem(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Some("expected \"table\" or \"schema.table\"".to_string());
    }
    parts.into_iter().find_map(|part| {
        validate_pg_identifier(part)
            .err()
            .map(|msg| format!("\"{part}\" {msg}"))
    })
}

fn check_objects(
    v: &Value,
    path: &str,
    fields: &[Field],
    noun: &str,
    unique: Option<&str>,
    e: &mut Errors,
) {
    let Value::Array(items) = v else {
        e.push(path, format!("expected an array, got {}", kind(v)));
        return;
    };
    if items.is_empty() {
        e.push(path, format!("must list at least one {noun}"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(o) = Obj::of(item, index(path, i), e) else {
            continue;
        };
        check_object(&o, fields, e);
        let Some(key) = unique else { continue };
        let valid =
            field(fields, key).is_some_and(|f| o.get(key).is_some_and(|v| is_valid(v, &f.kind)));
        if let (true, Some(Value::String(value))) = (valid, o.get(key)) {
            if seen.contains(&value.as_str()) {
                e.push(o.at(key), format!("duplicate {noun} {key} \"{value}\""));
            }
            seen.push(value);
        }
    }
}

/// One schema, a comma-separated list or an array; every schema a distinct Postgres identifier.
fn check_schema_list(v: &Value, path: &str, e: &mut Errors) {
    let mut seen: Vec<String> = Vec::new();
    let mut check = |name: &str, at: String, e: &mut Errors| {
        if let Err(msg) = validate_pg_identifier(name) {
            e.push(at, format!("schema \"{name}\" {msg}"));
        } else if seen.iter().any(|s| s == name) {
            e.push(at, format!("schema \"{name}\" is listed twice"));
        }
        seen.push(name.to_string());
    };
    match v {
        Value::String(s) => {
            for name in s.split(',') {
                check(name.trim(), path.to_string(), e);
            }
        }
        Value::Array(items) if items.is_empty() => e.push(path, "must list at least one schema"),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = expect_str(item, &index(path, i), e) {
                    check(name, index(path, i), e);
                }
            }
        }
        other => e.push(
            path,
            format!(
                "expected a string or an array of strings, got {}",
                kind(other)
            ),
        ),
    }
}

/// Fills in the table's defaults of top-level keys the user left out.
pub(crate) fn apply_table_defaults(fields: &[Field], config: &mut Map<String, Value>) {
    for f in fields {
        if let Some(default) = f.default {
            config.entry(f.name).or_insert_with(|| default.to_value());
        }
    }
}
