//! Tables for people: aligned columns under upper-case headers, no borders (as `kubectl get`
//! and `docker ps` print them), and key-value blocks for one object.

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Table};
use spec::{Database, DryRunPlan, Host, Instance, ServiceInstance, Task, TaskLogEntry};

/// Columns separated by two spaces, without borders or trailing spaces; a row shorter than
/// the header is padded with empty cells.
pub fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(Cell::new));
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    let mut out: String = t.lines().map(|l| l.trim_end().to_string() + "\n").collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

/// `KEY  value` lines, the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string() + "\n")
        .collect()
}

/// A timestamp to the second, in UTC.
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `n1 (host-1, host-2)` for each node.
fn nodes(d: &Database) -> String {
    d.spec
        .nodes
        .iter()
        .map(|n| format!("{} ({})", n.name, n.host_ids.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `mcp-server 1/1` for each service: instances running of instances placed.
fn services(d: &Database) -> String {
    d.spec
        .services
        .iter()
        .map(|s| {
            let mine: Vec<&ServiceInstance> = d
                .service_instances
                .iter()
                .filter(|i| i.service_id == s.service_id)
                .collect();
            let running = mine
                .iter()
                .filter(|i| i.state == spec::ServiceInstanceState::Running)
                .count();
            format!("{} {running}/{}", s.service_id, s.host_ids.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lower-case name serde gives an enum value (`available`, `read-write`).
pub fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `berth get databases`.
pub fn databases(list: &[Database]) -> String {
    let rows = list
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                name_of(&d.state),
                d.spec.database_name.clone(),
                nodes(d),
                services(d),
                time(&d.updated_at),
            ]
        })
        .collect();
    columns(
        &["ID", "STATE", "DATABASE", "NODES", "SERVICES", "UPDATED"],
        rows,
    )
}

/// `berth get database ID`: the database, then its Postgres and service instances.
pub fn database(d: &Database) -> String {
    let mut out = fields(&[
        ("ID", d.id.clone()),
        ("STATE", name_of(&d.state)),
        ("DATABASE", d.spec.database_name.clone()),
        (
            "POSTGRES",
            d.spec
                .postgres_version
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        ("NODES", nodes(d)),
        ("CREATED", time(&d.created_at)),
        ("UPDATED", time(&d.updated_at)),
    ]);
    out.push('\n');
    out.push_str(&instances(&d.instances));
    if !d.service_instances.is_empty() {
        out.push('\n');
        out.push_str(&service_instances(&d.service_instances));
    }
    out
}

fn instances(list: &[Instance]) -> String {
    let rows = list
        .iter()
        .map(|i| {
            let address = i
                .connection_info
                .as_ref()
                .and_then(|c| c.addresses.first().map(|a| format!("{a}:{}", c.port)))
                .unwrap_or_default();
            vec![
                i.id.clone(),
                i.node_name.clone(),
                i.host_id.clone(),
                name_of(&i.role),
                name_of(&i.state),
                address,
                i.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "INSTANCE", "NODE", "HOST", "ROLE", "STATE", "ADDRESS", "ERROR",
        ],
        rows,
    )
}

fn service_instances(list: &[ServiceInstance]) -> String {
    let rows = list
        .iter()
        .map(|s| {
            let status = s.status.clone().unwrap_or_default();
            let ports = status
                .ports
                .iter()
                .map(|p| match p.host_port {
                    Some(h) => format!("{}:{h}->{}", p.name, p.container_port),
                    None => format!("{}:{}", p.name, p.container_port),
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                s.service_instance_id.clone(),
                s.service_id.clone(),
                s.host_id.clone(),
                name_of(&s.state),
                if status.ready { "yes" } else { "no" }.to_string(),
                ports,
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "SERVICE INSTANCE",
            "SERVICE",
            "HOST",
            "STATE",
            "READY",
            "PORTS",
            "ERROR",
        ],
        rows,
    )
}

/// Bytes in GiB with one decimal (`15.6GiB`), the unit `free -h` and Docker use.
pub fn gib(bytes: u64) -> String {
    format!("{:.1}GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `berth get hosts`.
pub fn hosts(list: &[Host]) -> String {
    let rows = list
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                name_of(&h.status.state),
                h.addresses.join(", "),
                h.cpus.to_string(),
                gib(h.memory_bytes),
                h.agent_version.clone(),
                h.status.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &[
            "ID",
            "STATE",
            "ADDRESSES",
            "CPUS",
            "MEMORY",
            "VERSION",
            "ERROR",
        ],
        rows,
    )
}

/// `berth get host ID`.
pub fn host(h: &Host) -> String {
    fields(&[
        ("ID", h.id.clone()),
        ("STATE", name_of(&h.status.state)),
        ("SINCE", time(&h.status.updated_at)),
        ("ERROR", h.status.error.clone().unwrap_or_default()),
        ("AGENT", h.agent_address.clone()),
        ("ADDRESSES", h.addresses.join(", ")),
        ("ENGINE", h.engine_id.clone()),
        ("CPUS", h.cpus.to_string()),
        ("MEMORY", gib(h.memory_bytes)),
        ("VERSION", h.agent_version.clone()),
        ("REGISTERED", time(&h.registered_at)),
    ])
}

/// `berth get tasks ID`.
pub fn tasks(list: &[Task]) -> String {
    let rows = list
        .iter()
        .map(|t| {
            vec![
                t.task_id.clone(),
                name_of(&t.task_type),
                name_of(&t.status),
                time(&t.created_at),
                t.completed_at.as_ref().map(time).unwrap_or_default(),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    columns(
        &["TASK", "TYPE", "STATUS", "CREATED", "ENDED", "ERROR"],
        rows,
    )
}

/// `berth get task ID TASK`.
pub fn task(t: &Task) -> String {
    fields(&[
        ("TASK", t.task_id.clone()),
        ("DATABASE", t.database_id.clone()),
        ("TYPE", name_of(&t.task_type)),
        ("STATUS", name_of(&t.status)),
        ("CREATED", time(&t.created_at)),
        (
            "ENDED",
            t.completed_at.as_ref().map(time).unwrap_or_default(),
        ),
        ("ERROR", t.error.clone().unwrap_or_default()),
    ])
}

/// `berth apply --dry-run`: a heading, then one row per step the change would take.
/// `update` says whether the database exists (the plan is an update's, else a create's).
pub fn plan(p: &DryRunPlan, update: bool) -> String {
    let what = if update { "update" } else { "create" };
    if p.steps.is_empty() {
        return format!(
            "{what} of database {}: no change, nothing to do\n",
            p.database_id
        );
    }
    let n = p.steps.len();
    let mut out = format!(
        "{what} of database {}: {n} step{} (dry run, nothing was changed)\n\n",
        p.database_id,
        if n == 1 { "" } else { "s" }
    );
    let rows = p
        .steps
        .iter()
        .map(|s| {
            let target =
                s.instance_id
                    .clone()
                    .unwrap_or_else(|| match (&s.service_id, &s.node_name) {
                        (Some(svc), _) => format!("service {svc}"),
                        (None, Some(node)) => format!("node {node}"),
                        (None, None) => String::new(),
                    });
            vec![
                name_of(&s.action),
                name_of(&s.kind),
                target,
                s.host_id.clone().unwrap_or_default(),
                s.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&columns(
        &["ACTION", "KIND", "INSTANCE", "HOST", "REASON"],
        rows,
    ));
    out
}

/// One line of `berth logs`: the entry's time and message.
pub fn log_line(e: &TaskLogEntry) -> String {
    format!("{}  {}", time(&e.timestamp), e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_under_their_headers_without_trailing_space() {
        let out = columns(
            &["ID", "STATE", "ERROR"],
            vec![
                vec!["example".into(), "available".into(), String::new()],
                vec!["b".into(), "failed".into(), "image missing".into()],
            ],
        );
        assert_eq!(
            out,
            "ID       STATE      ERROR\n\
             example  available\n\
             b        failed     image missing\n"
        );
    }

    #[test]
    fn an_empty_list_is_its_header() {
        assert_eq!(columns(&["ID", "STATE"], Vec::new()), "ID  STATE\n");
    }

    #[test]
    fn fields_align_their_values() {
        assert_eq!(
            fields(&[
                ("ID", "x".into()),
                ("STATE", "ok".into()),
                ("ERROR", String::new())
            ]),
            "ID     x\nSTATE  ok\nERROR\n"
        );
    }

    fn database_value() -> serde_json::Value {
        json!({
            "id": "example", "state": "available",
            "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:05:00Z",
            "spec": {
                "database_name": "example",
                "nodes": [{"name": "n1", "host_ids": ["host-1", "host-2"]}],
                "services": [{"service_id": "mcp-server", "service_type": "mcp",
                              "version": "latest", "host_ids": ["host-1"], "config": {}}]
            },
            "instances": [{
                "id": "example-n1-host-1", "database_id": "example", "node_name": "n1",
                "host_id": "host-1", "role": "primary", "state": "available",
                "connection_info": {"addresses": ["10.0.0.11"], "port": 5432},
                "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:05Z"
            }],
            "service_instances": [{
                "service_instance_id": "example-mcp-server-host-1", "service_id": "mcp-server",
                "database_id": "example", "host_id": "host-1", "state": "running",
                "status": {"ready": true, "ports": [{"name": "http", "container_port": 8080, "host_port": 32768}]},
                "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:05Z"
            }]
        })
    }

    #[test]
    fn a_database_row_names_its_nodes_and_services() {
        let d: Database = serde_json::from_value(database_value()).unwrap();
        let out = databases(std::slice::from_ref(&d));
        let row = out.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "example  available  example   n1 (host-1, host-2)  mcp-server 1/1  2025-01-02 03:05:00"
        );
    }

    #[test]
    fn a_database_shows_its_instances_and_service_instances() {
        let d: Database = serde_json::from_value(database_value()).unwrap();
        let out = database(&d);
        assert!(
            out.starts_with("ID        example\nSTATE     available\n"),
            "{out}"
        );
        assert!(
            out.contains("example-n1-host-1  n1    host-1  primary  available  10.0.0.11:5432"),
            "{out}"
        );
        assert!(
            out.contains(
                "example-mcp-server-host-1  mcp-server  host-1  running  yes    http:32768->8080"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_task_row_has_its_type_status_and_error() {
        let t: Task = serde_json::from_value(json!({
            "task_id": "0192", "database_id": "example", "scope": "database",
            "entity_id": "example", "type": "update", "status": "failed",
            "created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:09Z",
            "completed_at": "2025-01-02T03:04:09Z", "error": "image missing"
        }))
        .unwrap();
        assert_eq!(
            tasks(&[t]).lines().nth(1).unwrap(),
            "0192  update  failed  2025-01-02 03:04:05  2025-01-02 03:04:09  image missing"
        );
    }

    #[test]
    fn memory_reads_in_gib() {
        assert_eq!(gib(16 * (1 << 30) + (1 << 29)), "16.5GiB");
    }

    #[test]
    fn a_plan_lists_one_row_per_step_naming_its_instance() {
        let p: DryRunPlan = serde_json::from_value(json!({
            "database_id": "example", "dry_run": true,
            "steps": [
                {"action": "replace", "kind": "service", "instance_id": "example-mcp-server-host-1",
                 "host_id": "host-1", "service_id": "mcp-server", "reason": "config changed"},
                {"action": "create_roles", "kind": "roles", "service_id": "rest", "reason": "new service"}
            ]
        }))
        .unwrap();
        assert_eq!(
            plan(&p, true),
            "update of database example: 2 steps (dry run, nothing was changed)\n\n\
             ACTION        KIND     INSTANCE                   HOST    REASON\n\
             replace       service  example-mcp-server-host-1  host-1  config changed\n\
             create_roles  roles    service rest                       new service\n"
        );
        let empty: DryRunPlan =
            serde_json::from_value(json!({"database_id": "example", "dry_run": true, "steps": []}))
                .unwrap();
        assert_eq!(
            plan(&empty, true),
            "update of database example: no change, nothing to do\n"
        );
    }
}
