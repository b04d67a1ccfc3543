//! Reading `apply -f FILE`: JSON or YAML, the full create body `{id, spec}` or a spec alone.
//!
//! The spec goes to the API as the JSON the file holds, unchecked: the control plane is the
//! one judge of a spec, and its answer names every offending field by path.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::CliError;

/// What `apply` sends: the database id and the rest of the body (`spec`, and any other key
/// the file had, for the API to judge).
///
/// The id is never left to the control plane: a create without one gets a fresh random id,
/// so applying the same file twice would make two databases where `apply` promises to
/// update the one it made.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyBody {
    pub id: String,
    /// The body without `id`: `{"spec": ...}`.
    pub rest: Map<String, Value>,
}

impl ApplyBody {
    /// The `POST /v1/databases` body: `{id, spec}`.
    pub fn create_body(&self) -> Value {
        let mut body = Map::new();
        body.insert("id".into(), Value::String(self.id.clone()));
        body.extend(self.rest.clone());
        Value::Object(body)
    }

    /// The `POST /v1/databases/{id}` body: `{spec}`.
    pub fn update_body(&self) -> Value {
        Value::Object(self.rest.clone())
    }
}

/// Reads `path` (`-`: standard input) and builds the apply body. Errors name the file and,
/// for a syntax error, the line and column.
pub fn read(path: &Path, id_flag: Option<&str>) -> Result<ApplyBody, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Usage(format!("standard input: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
    };
    let doc = parse(&text, format_of(path))
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    body(doc, id_flag).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// `.json` is JSON; anything else (`.yaml`, `.yml`, standard input) is read as YAML, of
/// which JSON is (nearly) a subset.
pub fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Yaml,
    }
}

/// Parses a document into JSON. Errors: the parser's message with its position.
pub fn parse(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| e.to_string()),
    }
}

/// What `apply` says of a file that names no database and a command line without `--id`.
pub const NO_ID: &str = "the file has no id: give --id ID or an `id` field";

/// Splits a document into id and body. A document with a `spec` key is the create body
/// `{id?, spec}`; any other object is the spec alone. `id_flag` (`--id`) supplies the id, and
/// must agree with the document's when both name one. Errors: no id at all ([`NO_ID`]), ids
/// that disagree, an id that is not a string, a document that is not an object.
pub fn body(doc: Value, id_flag: Option<&str>) -> Result<ApplyBody, String> {
    let Value::Object(mut o) = doc else {
        return Err("expected an object: the create body {id, spec} or a spec".into());
    };
    if !o.contains_key("spec") {
        let mut rest = Map::new();
        rest.insert("spec".into(), Value::Object(o));
        let id = id_flag.ok_or(NO_ID)?.to_string();
        return Ok(ApplyBody { id, rest });
    }
    let id = match (o.remove("id"), id_flag) {
        (None, Some(flag)) => flag.to_string(),
        (None, None) => return Err(NO_ID.into()),
        (Some(Value::String(doc)), None) => doc,
        (Some(Value::String(doc)), Some(flag)) if doc == flag => doc,
        (Some(Value::String(doc)), Some(flag)) => {
            return Err(format!(
                "id: the file names database {doc:?} and --id names {flag:?}"
            ));
        }
        (Some(other), _) => return Err(format!("id: expected a string, got {other}")),
    };
    Ok(ApplyBody { id, rest: o })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_create_body_keeps_its_id_and_spec() {
        let b = body(
            json!({"id": "example", "spec": {"database_name": "x"}}),
            None,
        )
        .unwrap();
        assert_eq!(b.id, "example");
        assert_eq!(
            b.create_body(),
            json!({"id": "example", "spec": {"database_name": "x"}})
        );
        assert_eq!(b.update_body(), json!({"spec": {"database_name": "x"}}));
    }

    #[test]
    fn a_spec_alone_takes_its_id_from_the_flag() {
        let b = body(json!({"database_name": "x", "nodes": []}), Some("example")).unwrap();
        assert_eq!(
            b.create_body(),
            json!({"id": "example", "spec": {"database_name": "x", "nodes": []}})
        );
    }

    #[test]
    fn a_file_without_an_id_needs_the_flag() {
        // Left to the control plane, the id would be a new random one on every apply.
        assert_eq!(
            body(json!({"database_name": "x"}), None).unwrap_err(),
            NO_ID
        );
        assert_eq!(body(json!({"spec": {}}), None).unwrap_err(), NO_ID);
        let b = body(json!({"spec": {}}), Some("example")).unwrap();
        assert_eq!(b.create_body(), json!({"id": "example", "spec": {}}));
    }

    #[test]
    fn the_flag_and_the_file_must_agree() {
        let doc = json!({"id": "a", "spec": {}});
        assert!(body(doc.clone(), Some("a")).is_ok());
        let e = body(doc, Some("b")).unwrap_err();
        assert_eq!(e, "id: the file names database \"a\" and --id names \"b\"");
        assert!(body(json!({"id": 7, "spec": {}}), None).is_err());
        assert!(body(json!([1]), None).is_err());
    }

    #[test]
    fn unknown_keys_go_to_the_api_to_be_named() {
        let b = body(json!({"id": "a", "spec": {}, "spek": 1}), None).unwrap();
        assert_eq!(b.create_body(), json!({"id": "a", "spec": {}, "spek": 1}));
    }

    #[test]
    fn yaml_and_json_read_the_same() {
        let yaml = "id: example\nspec:\n  database_name: example\n  nodes:\n    - name: n1\n      host_ids: [host-1]\n  port: 0\n";
        let json = r#"{"id":"example","spec":{"database_name":"example","nodes":[{"name":"n1","host_ids":["host-1"]}],"port":0}}"#;
        assert_eq!(
            parse(yaml, Format::Yaml).unwrap(),
            parse(json, Format::Json).unwrap()
        );
        // Standard input and other extensions are read as YAML, which takes JSON too.
        assert_eq!(
            parse(json, format_of(Path::new("-"))).unwrap(),
            parse(json, Format::Json).unwrap()
        );
        assert_eq!(format_of(Path::new("db.JSON")), Format::Json);
        assert_eq!(format_of(Path::new("db.yml")), Format::Yaml);
    }

    #[test]
    fn a_syntax_error_names_the_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.json");
        std::fs::write(&path, "{\"id\": \"a\",\n \"spec\": }").unwrap();
        let e = read(&path, None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let missing = read(&dir.path().join("none.yaml"), None).unwrap_err();
        assert!(missing.to_string().contains("none.yaml"), "{missing}");
    }
}
