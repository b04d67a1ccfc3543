//! `berth apply -f FILE [--id ID] [--wait | --dry-run]`: create the database, or update it
//! if it exists.

use reqwest::Method;
use spec::{CreateDatabaseResponse, DryRunPlan};

use super::tasks::{submitted, wait};
use super::{Ctx, out, out_json};
use crate::args::{ApplyArgs, Output};
use crate::client::decode;
use crate::error::{CliError, Exit};
use crate::spec_file;
use crate::table;

pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<Exit, CliError> {
    let body = spec_file::read(&args.file, args.id.as_deref())?;
    // Whether the database exists decides create or update; without an id it is a create
    // whose id the control plane picks.
    let exists = match &body.id {
        Some(id) => ctx
            .client
            .get_optional(&["v1", "databases", id])
            .await?
            .is_some(),
        None => false,
    };
    let (segments, request) = match (&body.id, exists) {
        (Some(id), true) => (vec!["v1", "databases", id.as_str()], body.update_body()),
        _ => (vec!["v1", "databases"], body.create_body()),
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
    if args.wait {
        wait(ctx, &answer.database.id, &answer.task.task_id).await
    } else {
        submitted(ctx, &v, &answer.task);
        Ok(Exit::Ok)
    }
}
