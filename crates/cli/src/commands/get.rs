//! `berth get databases|database ID|hosts|host ID|tasks ID|task ID TASK`.

use spec::{Database, Host, ListDatabasesResponse, ListHostsResponse, ListTasksResponse, Task};

use super::{Ctx, out, out_json};
use crate::args::{GetCommand, Output};
use crate::client::decode;
use crate::error::{CliError, Exit};
use crate::table;

pub async fn get(ctx: &Ctx, command: GetCommand) -> Result<Exit, CliError> {
    let limit;
    let (segments, query): (Vec<&str>, Vec<(&str, &str)>) = match &command {
        GetCommand::Databases => (vec!["v1", "databases"], vec![]),
        GetCommand::Database { id } => (vec!["v1", "databases", id], vec![]),
        GetCommand::Hosts => (vec!["v1", "hosts"], vec![]),
        GetCommand::Host { id } => (vec!["v1", "hosts", id], vec![]),
        GetCommand::Tasks { id, limit: l } => {
            limit = l.to_string();
            (
                vec!["v1", "databases", id, "tasks"],
                vec![("limit", limit.as_str())],
            )
        }
        GetCommand::Task { id, task } => (vec!["v1", "databases", id, "tasks", task], vec![]),
    };
    let v = ctx
        .client
        .json(reqwest::Method::GET, &segments, &query, None)
        .await?;
    if ctx.output == Output::Json {
        out_json(&v);
        return Ok(Exit::Ok);
    }
    let text = match command {
        GetCommand::Databases => {
            table::databases(&decode::<ListDatabasesResponse>("databases", v)?.databases)
        }
        GetCommand::Database { .. } => table::database(&decode::<Database>("the database", v)?),
        GetCommand::Hosts => table::hosts(&decode::<ListHostsResponse>("hosts", v)?.hosts),
        GetCommand::Host { .. } => table::host(&decode::<Host>("the host", v)?),
        GetCommand::Tasks { .. } => table::tasks(&decode::<ListTasksResponse>("tasks", v)?.tasks),
        GetCommand::Task { .. } => table::task(&decode::<Task>("the task", v)?),
    };
    out(&text);
    Ok(Exit::Ok)
}
