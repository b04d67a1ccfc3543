//! `GET /v1/service-types`: the service catalog, from the field tables the validator checks
//! against and the version manifest this replica resolves versions with
//! ([`spec::catalog::describe`]).

use axum::Json;
use axum::extract::State;
use spec::ListServiceTypesResponse;

use crate::state::AppState;

/// Every service type a spec may name, with its versions (`latest` marked), its config fields
/// (type, required or when, default, allowed values, bounds, secret or not) and the defaults a
/// service of it gets, `target_session_attrs` included.
#[utoipa::path(get, path = "/v1/service-types", tag = "service-types",
    responses((status = 200, body = ListServiceTypesResponse)))]
pub(crate) async fn list(State(app): State<AppState>) -> Json<ListServiceTypesResponse> {
    Json(ListServiceTypesResponse {
        service_types: spec::catalog::describe::describe(&app.manifest),
    })
}
