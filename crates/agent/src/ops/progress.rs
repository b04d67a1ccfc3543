//! How an operation fails and how it reports progress to its caller.

use std::time::{Duration, SystemTime};

use agent_proto::v1::{ApplyEvent, LogLine, apply_event};
use tokio::sync::mpsc;
use tonic::Status;

use crate::instance::SpecError;
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("instance directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("instance {0} has no container")]
    NotFound(String),
    #[error("instance {0} is not running")]
    NotRunning(String),
    #[error("instance {instance_id} failed to start: {reason}")]
    StartFailed { instance_id: String, reason: String },
    #[error(
        "image {image} is not on this host's engine and its pull policy is never: build or load it \
         on the host (deploy/images), or publish it to a registry and set image_pull_policy \
         if_not_present in the manifest"
    )]
    ImageMissing { image: String },
    #[error("image {image} is not on this host's engine and pulling it failed: {reason}")]
    ImagePull { image: String, reason: String },
    #[error("instance {instance_id} not ready after {waited:?}: {reason}")]
    ReadyTimeout {
        instance_id: String,
        waited: Duration,
        reason: String,
    },
}

impl From<OpError> for Status {
    fn from(e: OpError) -> Self {
        let message = e.to_string();
        match e {
            OpError::Spec(_) => Status::invalid_argument(message),
            OpError::Runtime(RuntimeError::Unavailable(_)) => Status::unavailable(message),
            OpError::Runtime(RuntimeError::NotFound(_)) => Status::failed_precondition(message),
            OpError::Runtime(RuntimeError::Timeout(_)) => Status::deadline_exceeded(message),
            OpError::Runtime(_) | OpError::Io(_) => Status::internal(message),
            OpError::NotFound(_) => Status::not_found(message),
            OpError::NotRunning(_) => Status::failed_precondition(message),
            OpError::StartFailed { .. } => Status::aborted(message),
            OpError::ImageMissing { .. } | OpError::ImagePull { .. } => {
                Status::failed_precondition(message)
            }
            OpError::ReadyTimeout { .. } => Status::deadline_exceeded(message),
        }
    }
}

/// Where an operation's log lines go: the gRPC stream (best effort: a client that went away does not stop the
/// operation half-way) and the agent's own log.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::Sender<Result<ApplyEvent, Status>>>,
}

impl Progress {
    pub fn new(tx: mpsc::Sender<Result<ApplyEvent, Status>>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Progress that only goes to the agent's log.
    pub fn silent() -> Self {
        Self { tx: None }
    }

    pub async fn log(&self, message: impl Into<String>, fields: &[(&str, String)]) {
        let message = message.into();
        let field_text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(fields = %field_text.join(" "), "{message}");
        if let Some(tx) = &self.tx {
            let line = LogLine {
                timestamp: Some(SystemTime::now().into()),
                message,
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            };
            let _ = tx
                .send(Ok(ApplyEvent {
                    event: Some(apply_event::Event::Log(line)),
                }))
                .await;
        }
    }
}
