//! Bodies of the API the parser does not read through serde (requests are checked by hand in
//! [`crate::parse`], to name every offending field) but the OpenAPI document must still type,
//! and the bodies of the host-scoped routes. Field rules as in the reference API.

use serde::{Deserialize, Serialize};

use crate::{DatabaseSpec, Task};

/// `POST /v1/databases`: `{id?, tenant_id?, spec}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateDatabaseRequest {
    /// 1-36 lowercase letters, digits or hyphens, starting and ending with a letter or digit,
    /// without `--`; a UUID when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 36, example = "storefront")]
    pub id: Option<String>,
    /// The owner's identifier, returned as given: 1-63 lowercase letters, digits or hyphens
    /// ([`crate::ident::validate_tenant_id`], the reference API's `Identifier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 63, example = "engineering")]
    pub tenant_id: Option<String>,
    pub spec: DatabaseSpec,
}

/// `POST /v1/databases/{database_id}`: `{tenant_id?, spec}`, the spec a declarative full
/// replace. Secret config values left out are kept from the stored spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateDatabaseRequest {
    /// The owner's identifier ([`crate::ident::validate_tenant_id`]); absent keeps the
    /// stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 63, example = "engineering")]
    pub tenant_id: Option<String>,
    pub spec: DatabaseSpec,
}

/// What a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskScope {
    Database,
    Host,
}

impl TaskScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskScope::Database => "database",
            TaskScope::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [TaskScope::Database, TaskScope::Host]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// `DELETE /v1/hosts/{host_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoveHostResponse {
    /// The removal, a task of scope `host`; it has ended by the time the answer is sent, and
    /// its log says what was removed and revoked.
    pub task: Task,
    /// The reference API's tasks updating databases affected by the removal. Always empty:
    /// berth never rewrites a database's spec by itself, so a database whose spec still names
    /// the host (a forced removal) keeps it until its spec is updated.
    pub update_database_tasks: Vec<Task>,
    /// The serial number (hex) of the host's certificate, now on the deny list; absent when
    /// the host had none recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_certificate_serial: Option<String>,
}
