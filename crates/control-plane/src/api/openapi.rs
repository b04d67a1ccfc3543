//! The OpenAPI 3.1 document: every route of [`super::routes`] (a test compares the two), the
//! bearer authentication of ADR 012, and each service type's `config` typed from the catalog's
//! field tables (`spec::catalog::schema`), `ServiceSpec` being a `oneOf` by `service_type`.

use serde_json::{Value, json};
use spec::ServiceType;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth control plane",
        description = "Declarative control plane for Postgres databases and their services. \
            Compatible with the pgEdge Control Plane's v1 API: same paths, bodies and status codes."
    ),
    paths(
        super::root::root,
        super::databases::create,
        super::databases::list,
        super::databases::get,
        super::databases::update,
        super::databases::delete,
        super::operations::switchover,
        super::operations::failover,
        super::operations::backup,
        super::backups::list,
        super::operations::restore,
        super::operations::restart,
        super::operations::stop,
        super::operations::start,
        super::tasks::list,
        super::tasks::get,
        super::tasks::log,
        super::tasks::cancel,
        super::all_tasks::cancel,
        super::all_tasks::list,
        super::hosts::list,
        super::hosts::get,
        super::hosts::remove,
        super::hosts::rejoin_token,
        super::host_tasks::list,
        super::host_tasks::get,
        super::host_tasks::log,
        super::service_types::list,
        super::version,
        super::openapi,
        metrics,
    ),
    components(schemas(
        spec::ApiErrorBody,
        spec::FieldError,
        spec::DatabaseSpec,
        spec::ServiceSpec,
        spec::TaskScope,
        super::SortOrder,
        // Recursive, so not collected from the routes that use it.
        spec::catalog::describe::ConfigField,
        spec::catalog::describe::FieldType,
        spec::catalog::describe::FieldCondition,
    )),
    tags(
        (name = "databases", description = "Databases: a spec, submitted whole, and what runs for it"),
        (name = "tasks", description = "Every change is a task with a status and a log"),
        (name = "hosts", description = "The hosts of the fleet, their removal and its tasks"),
        (name = "service-types", description = "The service catalog: what a spec's `services` may hold"),
        (name = "system", description = "Discovery, version, metrics"),
    )
)]
struct ApiDoc;

/// Prometheus metrics, served by the telemetry router `crate::run` merges into the API's
/// listener ([`super::MERGED_ROUTES`]); here for the document only.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4")))]
#[allow(dead_code)]
fn metrics() {}

/// The name of the security scheme every route but the open ones needs.
const BEARER: &str = "bearer";

/// The OpenAPI document, generated from the handlers and types; `specs/openapi.json` holds a
/// copy that a test keeps current.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_string(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`berth_<id>_<secret>`, minted by `berth-control-plane token create`; \
                     read-only tokens may GET and HEAD (ADR 012). Off when the control plane \
                     runs without authentication.",
                ))
                .build(),
        )),
    );
    for (name, schema) in service_spec_schemas() {
        components.schemas.insert(name, schema);
    }
    doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = super::auth::OPEN_PATHS.contains(&path.as_str());
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("head", &mut item.head),
            ("patch", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            if open {
                operation.security = Some(Vec::new());
            }
            if let Some(id) = operation_id(method, path) {
                operation.operation_id = Some(id.to_string());
            }
            describe_responses(operation);
        }
    }
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// Operation ids: the reference API's for the routes it has, and names in its style for
/// berth's own (the handlers' names repeat across modules; ids must be unique).
fn operation_id(method: &str, path: &str) -> Option<&'static str> {
    Some(match (method, path) {
        ("get", "/") => "get-service-description",
        ("get", "/v1/databases") => "list-databases",
        ("post", "/v1/databases") => "create-database",
        ("get", "/v1/databases/{database_id}") => "get-database",
        ("post", "/v1/databases/{database_id}") => "update-database",
        ("delete", "/v1/databases/{database_id}") => "delete-database",
        ("get", "/v1/databases/{database_id}/tasks") => "list-database-tasks",
        ("get", "/v1/databases/{database_id}/tasks/{task_id}") => "get-database-task",
        ("get", "/v1/databases/{database_id}/tasks/{task_id}/log") => "get-database-task-log",
        ("get", "/v1/databases/{database_id}/tasks/{task_id}/cancel") => "cancel-database-task",
        ("post", "/v1/databases/{database_id}/tasks/{task_id}/cancel") => {
            "cancel-database-task-by-post"
        }
        ("get", "/v1/tasks") => "list-tasks",
        ("get", "/v1/hosts") => "list-hosts",
        ("get", "/v1/hosts/{host_id}") => "get-host",
        ("delete", "/v1/hosts/{host_id}") => "remove-host",
        ("post", "/v1/hosts/{host_id}/rejoin-token") => "create-host-rejoin-token",
        ("get", "/v1/hosts/{host_id}/tasks") => "list-host-tasks",
        ("get", "/v1/hosts/{host_id}/tasks/{task_id}") => "get-host-task",
        ("get", "/v1/hosts/{host_id}/tasks/{task_id}/logs") => "get-host-task-log",
        ("get", "/v1/service-types") => "list-service-types",
        ("get", "/v1/version") => "get-version",
        ("get", "/v1/openapi.json") => "get-openapi",
        ("get", "/metrics") => "get-metrics",
        _ => return None,
    })
}

/// Gives every response a description (OpenAPI requires one) from its status and the error
/// name the API answers with ([`super::ApiError`]), and adds the error every operation may
/// answer with otherwise.
fn describe_responses(operation: &mut utoipa::openapi::path::Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = match status.as_str() {
                "200" => "OK",
                "400" => {
                    "`invalid_input`: malformed JSON, a wrong type, a missing or unknown \
                    field, or a broken rule; `errors` names every offending field by JSON path"
                }
                "404" => "`not_found`: no such database, task or host",
                "409" => {
                    "`conflict`, `database_already_exists`, `database_not_modifiable`, \
                    `task_not_cancelable` or `port_taken` (a fixed host port another database \
                    holds on that host; `errors` names each field): the request conflicts with \
                    the current state"
                }
                "413" => "`payload_too_large`: the request body is over 2 MiB",
                _ => "see `name` and `message`",
            }
            .to_string();
        }
    }
    operation
        .responses
        .responses
        .entry("default".to_string())
        .or_insert_with(|| {
            RefOr::T(
                utoipa::openapi::ResponseBuilder::new()
                    .description(
                        "Any other error: `unauthorized` (401), `forbidden` (403), \
                         `unavailable` (503, etcd unreachable), `etcd_out_of_space` (507), \
                         `server_error` (500)",
                    )
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ApiErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        });
}

/// `McpConfig`, `RagConfig`, `PostgrestConfig` from the catalog; `McpServiceSpec` and its
/// siblings, each the common service fields with its own `service_type` and `config`; and
/// `ServiceSpec`, a `oneOf` of those with `service_type` as discriminator. The derived
/// `ServiceSpec` becomes `ServiceSpecFields`.
fn service_spec_schemas() -> Vec<(String, RefOr<Schema>)> {
    let derived = ApiDoc::openapi()
        .components
        .and_then(|c| c.schemas.get("ServiceSpec").cloned())
        .expect("ServiceSpec is a component");
    let mut out = vec![("ServiceSpecFields".to_string(), derived)];
    let mut variants = Vec::new();
    let mut mapping = serde_json::Map::new();
    for t in ServiceType::ALL {
        let title = title_case(t.as_str());
        let config = format!("{title}Config");
        let spec = format!("{title}ServiceSpec");
        out.push((
            config.clone(),
            schema(spec::catalog::schema::config_schema(t)),
        ));
        out.push((
            spec.clone(),
            schema(json!({
                "description": format!("A service of type `{t}`."),
                "allOf": [
                    {"$ref": "#/components/schemas/ServiceSpecFields"},
                    {
                        "type": "object",
                        "required": ["service_type", "config"],
                        "properties": {
                            "service_type": {"type": "string", "enum": [t.as_str()]},
                            "config": {"$ref": format!("#/components/schemas/{config}")},
                        },
                    },
                ],
            })),
        ));
        let reference = format!("#/components/schemas/{spec}");
        variants.push(json!({"$ref": reference}));
        mapping.insert(t.as_str().to_string(), Value::String(reference));
    }
    out.push((
        "ServiceSpec".to_string(),
        schema(json!({
            "description": "One element of `services`: a supporting service with one instance \
                per host. `config` is typed by `service_type` (GET /v1/service-types describes \
                the same rules).",
            "oneOf": variants,
            "discriminator": {"propertyName": "service_type", "mapping": mapping},
        })),
    ));
    out
}

/// A schema from its JSON; a test checks that nothing is lost on the way through utoipa's
/// types.
pub(crate) fn schema(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).expect("a schema utoipa can represent")
}

fn title_case(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers as f64, so `2` and `2.0` compare equal, as they are in JSON.
    fn numbers_as_f64(v: Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64()),
            Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_f64).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, numbers_as_f64(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// utoipa's schema types keep every keyword the catalog's schemas use.
    #[test]
    fn catalog_schemas_survive_utoipa_types() {
        for t in ServiceType::ALL {
            let original = spec::catalog::schema::config_schema(t);
            let back = serde_json::to_value(schema(original.clone())).unwrap();
            assert_eq!(numbers_as_f64(back), numbers_as_f64(original), "{t}");
        }
    }
}
