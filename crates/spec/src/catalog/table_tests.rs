//! Checks of the field tables themselves, and that what the catalog describes is enough to
//! build a config the validator accepts.

use serde_json::Value;

use super::describe::describe;
use super::example::example_config;
use super::fields::{Field, Format, Kind};
use super::schema::{config_schema, format_facts};
use super::*;
use crate::Manifest;

/// Every table of a type, nested ones included, with a path for messages.
fn tables(t: ServiceType) -> Vec<(String, &'static [Field])> {
    fn walk(path: String, fields: &'static [Field], out: &mut Vec<(String, &'static [Field])>) {
        out.push((path.clone(), fields));
        for f in fields {
            match f.kind {
                Kind::Object(inner) | Kind::Objects { fields: inner, .. } => {
                    walk(format!("{path}.{}", f.name), inner, out)
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(t.to_string(), rules(t).fields, &mut out);
    out
}

fn valid_for(kind: &Kind, v: &Value) -> bool {
    let mut e = crate::check::Errors::default();
    let map = serde_json::Map::from_iter([("k".to_string(), v.clone())]);
    let o = crate::check::Obj {
        map: &map,
        path: String::new(),
    };
    let field = Field::new("k", *kind, "");
    fields::check_object(&o, std::slice::from_ref(&field), &mut e);
    e.is_empty()
}

#[test]
fn conditions_name_a_sibling_and_one_of_its_values() {
    for t in ServiceType::ALL {
        for (path, fields) in tables(t) {
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let mut seen = std::collections::BTreeSet::new();
            for f in fields {
                assert!(seen.insert(f.name), "{path}.{} is listed twice", f.name);
                let conds = f.required_when.iter().chain(f.allowed_when.iter());
                let session = rules(t).session_attrs.when.iter().map(|(c, _)| c);
                let conds: Vec<_> = if path == t.to_string() {
                    conds.chain(session).collect()
                } else {
                    conds.collect()
                };
                for c in conds {
                    let target = fields
                        .iter()
                        .find(|g| g.name == c.field)
                        .unwrap_or_else(|| {
                            panic!("{path}.{}: no key {} beside it", f.name, c.field)
                        });
                    assert!(names.contains(&c.field));
                    for l in c.values {
                        assert!(
                            valid_for(&target.kind, &l.to_value()),
                            "{path}.{}: {} can never be {}",
                            f.name,
                            c.field,
                            l.display()
                        );
                    }
                }
                assert!(
                    !(f.required && f.default.is_some()),
                    "{path}.{}: required keys have no default",
                    f.name
                );
                for l in f.default.iter().chain(f.example.iter()) {
                    assert!(
                        valid_for(&f.kind, &l.to_value()),
                        "{path}.{}: {} is not valid for it",
                        f.name,
                        l.display()
                    );
                }
                // A form must be able to fill in whatever may be required.
                let may_be_required = f.required || !f.required_when.is_empty();
                if may_be_required && matches!(f.kind, Kind::String { .. }) {
                    assert!(f.example.is_some(), "{path}.{}: give it an example", f.name);
                }
            }
        }
    }
}

#[test]
fn patterns_agree_with_the_validator() {
    let samples = [
        "docs",
        "a",
        "_x",
        "a1",
        "a-b",
        "a--b",
        "-a",
        "a-",
        "Docs",
        "1abc",
        "my_table",
        "s.t",
        "a.b.c",
        "",
        "pg_monitor",
        &format!("{}.b", "a".repeat(63)),
        &format!("{}.b", "a".repeat(64)),
        "x y",
        &"a".repeat(36),
        &"a".repeat(37),
        &"a".repeat(63),
        &"a".repeat(64),
    ];
    for format in [
        Format::Id,
        Format::PgIdentifier,
        Format::TableName,
        Format::PgRole,
    ] {
        let facts = format_facts(format);
        let pattern = regex::Regex::new(facts.pattern.unwrap()).unwrap();
        for s in samples {
            let by_pattern = pattern.is_match(s)
                && facts.max_chars.is_none_or(|m| s.chars().count() <= m)
                && !(format == Format::PgRole && s.starts_with("pg_"));
            let kind = fields::text(format);
            assert_eq!(
                by_pattern,
                valid_for(&kind, &Value::String(s.to_string())),
                "{format:?} on {s:?}"
            );
        }
    }
}

#[test]
fn a_config_built_from_the_description_validates() {
    let manifest = Manifest::builtin();
    let described = describe(&manifest);
    assert_eq!(
        described.iter().map(|d| d.service_type).collect::<Vec<_>>(),
        ServiceType::ALL.to_vec()
    );
    for d in &described {
        for switch_on in [false, true] {
            let config = example_config(&d.config_fields, switch_on);
            let errors = validate_config(d.service_type, &config, "config");
            assert!(
                errors.is_empty(),
                "{} (switch_on {switch_on}): {config:?} fails: {errors:?}",
                d.service_type
            );
        }
    }
    // Switching features on really exercises the conditional keys.
    let mcp = example_config(&described[0].config_fields, true);
    for key in [
        "llm_provider",
        "anthropic_api_key",
        "embedding_model",
        "openai_api_key",
    ] {
        assert!(mcp.contains_key(key), "{key} missing from {mcp:?}");
    }
}

#[test]
fn versions_come_from_the_manifest_with_latest_marked() {
    let manifest = Manifest::from_json(crate::LOCAL_MANIFEST).unwrap();
    for d in describe(&manifest) {
        let versions: Vec<&str> = d.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(versions, manifest.service_versions(d.service_type));
        let latest: Vec<&str> = d
            .versions
            .iter()
            .filter(|v| v.latest)
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(
            latest,
            vec![manifest.default_service_version(d.service_type).unwrap()]
        );
    }
}

#[test]
fn described_fields_say_type_secret_default_and_allowed_values() {
    let described = describe(&Manifest::builtin());
    let mcp = &described[0];
    let field = |name: &str| {
        mcp.config_fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(field("llm_enabled").default, Some(Value::Bool(false)));
    assert!(field("anthropic_api_key").secret);
    assert!(!field("llm_model").secret);
    assert_eq!(
        field("llm_provider").allowed_values.as_deref(),
        Some(&["anthropic".to_string(), "openai".into(), "ollama".into()][..])
    );
    assert_eq!(
        mcp.defaults.config.get("allow_writes"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        mcp.defaults.database_connection.target_session_attrs,
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(
        mcp.defaults.database_connection.target_session_attrs_when[0].target_session_attrs,
        TargetSessionAttrs::Primary
    );
    let rag = &described[1];
    assert!(rag.config_fields[0].required);
    assert_eq!(rag.config_fields[0].unique_key.as_deref(), Some("name"));
}

#[test]
fn session_attrs_defaults_by_type() {
    use serde_json::json;
    let effective = |t, v: Value| effective_config(t, v.as_object().unwrap());
    let cases = [
        (
            ServiceType::Mcp,
            json!({}),
            TargetSessionAttrs::PreferStandby,
        ),
        (
            ServiceType::Mcp,
            json!({"allow_writes": true}),
            TargetSessionAttrs::Primary,
        ),
        (
            ServiceType::Postgrest,
            json!({}),
            TargetSessionAttrs::ReadWrite,
        ),
        (
            ServiceType::Rag,
            json!({}),
            TargetSessionAttrs::PreferStandby,
        ),
    ];
    for (t, config, want) in cases {
        assert_eq!(
            default_target_session_attrs(t, &effective(t, config)),
            want,
            "{t}"
        );
    }
}

#[test]
fn config_schema_has_every_key_and_marks_secrets_write_only() {
    for t in ServiceType::ALL {
        let schema = config_schema(t);
        let properties = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = rules(t).fields.iter().map(|f| f.name).collect();
        names.sort_unstable();
        let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, names);
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        for f in rules(t).fields {
            assert_eq!(
                properties[f.name]["writeOnly"].as_bool().unwrap_or(false),
                f.is_secret(),
                "{t}.{}",
                f.name
            );
        }
    }
}
