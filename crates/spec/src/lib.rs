//! The API's types and the rules that decide whether a spec is acceptable.
//!
//! Nothing here touches the network or the disk (the manifest is parsed from text the
//! caller read), so every rule is cheap to test.

pub mod api;
pub mod error;
pub mod model;

pub use api::*;
pub use error::{FieldError, InvalidInput};
pub use model::*;
