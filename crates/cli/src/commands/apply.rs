//! `berth apply -f FILE [--id ID] [--wait | --dry-run]`: create the database, or update it
//! if it exists.

use reqwest::Method;
use spec::{CreateDatabaseResponse, DryRunPlan};

use super::tasks::started;
use super::{Ctx, out, out_json};
use crate::args::{ApplyArgs, Output};
use crate::client::decode;
use crate::error::{CliError, Exit};
use crate::spec_file;
use crate::table;

pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<Exit, CliError> {
    // The file (or --id) must name the database: only then is a second apply an update.
    let body = spec_file::read(&args.file, args.id.as_deref())?;
    let exists = ctx
        .client
        .get_optional(&["v1", "databases", &body.id])
        .await?
        .is_some();
    let (segments, request) = if exists {
        (
            vec!["v1", "databases", body.id.as_str()],
            body.update_body(),
        )
    } else {
        (vec!["v1", "databases"], body.create_body())
    };
    if args.dry_run {
        let v = ctx
            .client
            .json(
                Method::POST,
                &segments,
                &[("dry_run", "true")],
                Some(&request),
            )
            .await?;
        if ctx.output == Output::Json {
            out_json(&v);
        } else {
            let plan: DryRunPlan = decode("the plan", v)?;
            out(&table::plan(&plan, exists));
        }
        return Ok(Exit::Ok);
    }
    let v = ctx
        .client
        .json(Method::POST, &segments, &[], Some(&request))
        .await?;
    let answer: CreateDatabaseResponse = decode("the answer", v.clone())?;
    started(ctx, &v, &answer.task, args.wait).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stand_in::{closed_port, global};

    /// `apply -f` of a spec without an id, against a port nothing listens on: a usage error
    /// (exit 3) before any request, not a connection error.
    async fn apply_without_an_id(dry_run: bool) -> CliError {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.yaml");
        std::fs::write(&file, "database_name: app\nnodes: []\n").unwrap();
        let url = format!("http://127.0.0.1:{}", closed_port());
        let ctx = Ctx::new(&global(&url)).unwrap();
        let args = ApplyArgs {
            file: file.clone(),
            id: None,
            wait: false,
            dry_run,
        };
        apply(&ctx, args).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_file_without_an_id_is_refused_before_any_request() {
        for dry_run in [false, true] {
            let e = apply_without_an_id(dry_run).await;
            assert!(matches!(e, CliError::Usage(_)), "{e}");
            assert_eq!(e.exit(), Exit::Refused);
            let text = e.to_string();
            assert!(text.ends_with(spec_file::NO_ID), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
        }
    }
}
