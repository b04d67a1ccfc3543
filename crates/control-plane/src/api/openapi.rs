use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth control plane",
        description = "Declarative control plane for Postgres databases and their services"
    ),
    paths(
        super::databases::create,
        super::databases::list,
        super::databases::get,
        super::databases::update,
        super::databases::delete,
        super::tasks::list,
        super::tasks::get,
        super::tasks::log,
        super::tasks::cancel,
        super::hosts::list,
        super::hosts::get,
        super::hosts::remove,
        super::hosts::rejoin_token,
    ),
    components(schemas(
        spec::ApiErrorBody,
        spec::FieldError,
        spec::DatabaseSpec,
        spec::ServiceSpec
    ))
)]
struct ApiDoc;

/// The OpenAPI document, generated from the handlers and types; `specs/openapi.json` holds a
/// copy that a test keeps current.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
}
