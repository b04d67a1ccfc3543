//! The API's types and the rules that decide whether a spec is acceptable.
//!
//! Nothing here touches the network or the disk (the manifest is parsed from text the
//! caller read), so every rule is cheap to test.
//!
//! Where each rule lives:
//! - [`parse`]: the entry point for request bodies; structure of the body, spec, nodes,
//!   services and `database_connection`, unknown keys, uniqueness, host placement, ports,
//!   and the cross-field rules. It calls everything below.
//! - [`ident`]: what an id, a node name and a Postgres identifier may look like.
//! - [`quantity`]: `cpus` and `memory` strings.
//! - [`limits`]: `cpus` and `memory` against the hosts a service is placed on.
//! - [`manifest`]: version syntax and resolution of versions to images.
//! - [`catalog`]: each service type's `config` keys, rules and defaults (one module per
//!   type), and which keys hold secrets.
//! - [`secrets`]: redacting, splitting and carrying over secret config values.
//! - [`backup`]: `backup_config` and `restore_config` (pgBackRest), their rules in
//!   `parse/backup.rs`.

pub mod api;
pub mod backup;
pub mod bodies;
pub mod catalog;
mod check;
pub mod error;
pub mod ident;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod operations;
pub mod parse;
pub mod quantity;
pub mod secrets;
pub mod subscriptions;
pub mod wal;

pub use api::*;
pub use bodies::*;
pub use catalog::describe::ListServiceTypesResponse;
pub use error::{FieldError, InvalidInput};
pub use manifest::{BUILTIN_MANIFEST, LOCAL_MANIFEST, Manifest, ManifestError, ResolvedImage};
pub use model::*;
pub use parse::{
    CreateRequest, UpdateRequest, ValidationContext, parse_create_request, parse_update_body,
    parse_update_request, validate_database_id,
};
