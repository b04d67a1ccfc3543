//! api: spec submissions per second and latency through the HTTP API (accept, validate, seal, one etcd
//! transaction, task creation) against the same number of raw etcd transactions of the same shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::{Value, json};

use crate::procs::{Stack, StackOptions, start_hollow};
use crate::profile::Profile;
use crate::stats::{Table, fmt_opt, percentile, verdict};

pub struct ApiOptions {
    pub requests: usize,
    pub clients: usize,
    /// Sample the control plane with perf during the API run and print where its time went.
    pub profile: bool,
}

pub fn create_body(id: &str, node_host: &str, service_host: &str) -> Value {
    json!({
        "id": id,
        "spec": {
            "database_name": "app",
            "nodes": [{"name": "n1", "host_ids": [node_host]}],
            "services": [{
                "service_id": "mcp-server",
                "service_type": "mcp",
                "version": "latest",
                "host_ids": [service_host],
                "config": {
                    "llm_enabled": true,
                    "llm_provider": "anthropic",
                    "llm_model": "claude-sonnet-4-5",
                    "anthropic_api_key": "sk-ant-bench-SECRET"
                }
            }]
        }
    })
}

/// Runs `total` operations over `clients` concurrent workers; returns each one's latency in ms and the wall time.
async fn closed_loop<F, Fut>(total: usize, clients: usize, op: F) -> Result<(Vec<f64>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for w in workers {
        all.extend(w.await??);
    }
    Ok((all, started.elapsed()))
}

pub async fn run(options: ApiOptions) -> Result<Table> {
    let stack = Arc::new(Stack::start(StackOptions::default()).await?);
    // Simulated hosts, joined and registered as real ones are: validation needs the hosts known, and with
    // `--no-reconcile` nothing is ever applied to them.
    let _hosts = start_hollow(&stack, "api-host", 3, 0, 0)?;
    stack.wait_hosts_healthy(3, Duration::from_secs(30)).await?;

    // Warm-up: connections, the control plane's caches, etcd's first allocations.
    let warm = options.clients.min(options.requests);
    let s = stack.clone();
    closed_loop(warm, options.clients, move |i| {
        let s = s.clone();
        async move {
            s.post(
                "/v1/databases",
                &create_body(&format!("warm-{i}"), "api-host-1", "api-host-2"),
            )
            .await
            .map(|_| ())
        }
    })
    .await
    .context("warm-up submissions")?;

    let etcd_before = stack.etcd_requests().await?;
    let perf = options
        .profile
        .then(|| Profile::start(stack.control_plane.pid(), stack.dir.path()))
        .flatten();
    let s = stack.clone();
    let (api_lat, api_wall) = closed_loop(options.requests, options.clients, move |i| {
        let s = s.clone();
        async move {
            let host = format!("api-host-{}", i % 3 + 1);
            s.post(
                "/v1/databases",
                &create_body(&format!("db-{i}"), &host, "api-host-2"),
            )
            .await
            .map(|_| ())
        }
    })
    .await
    .context("API submissions")?;
    let profile = perf.map(Profile::report);
    let etcd_per_create = stack.etcd_requests().await?.since(&etcd_before);

    // The raw transactions carry values of the sizes the create just stored.
    let mut etcd = etcd_client::Client::connect([stack.etcd.endpoint()], None).await?;
    let mut sizes = Vec::new();
    for key in [
        "/berth/databases/db-0/spec".to_string(),
        "/berth/databases/db-0/record".to_string(),
    ] {
        let got = etcd.get(key.as_str(), None).await?;
        match got.kvs().first() {
            Some(kv) => sizes.push(kv.value().len()),
            None => bail!("{key} is not in etcd: has the store's key layout changed?"),
        }
    }
    let tasks = etcd
        .get(
            "/berth/tasks/db-0/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    sizes.push(tasks.kvs().first().map_or(512, |kv| kv.value().len()));

    let size_note = format!(
        "raw transaction values are sized like the stored create: spec {} B, record {} B, task {} B",
        sizes[0], sizes[1], sizes[2]
    );
    let sizes = Arc::new(sizes);
    let (raw_lat, raw_wall) = closed_loop(options.requests, options.clients, move |i| {
        let mut etcd = etcd.clone();
        let sizes = sizes.clone();
        async move {
            let spec_key = format!("/raw/databases/db-{i}/spec");
            let txn = Txn::new()
                .when([Compare::create_revision(
                    spec_key.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([
                    TxnOp::put(spec_key.as_str(), vec![b'x'; sizes[0]], None),
                    TxnOp::put(
                        format!("/raw/databases/db-{i}/record"),
                        vec![b'x'; sizes[1]],
                        None,
                    ),
                    TxnOp::put(format!("/raw/tasks/db-{i}/t"), vec![b'x'; sizes[2]], None),
                ]);
            let r = etcd.txn(txn).await?;
            if !r.succeeded() {
                bail!("raw txn {i} found its key already there");
            }
            Ok(())
        }
    })
    .await
    .context("raw etcd transactions")?;

    let api_rate = options.requests as f64 / api_wall.as_secs_f64();
    let raw_rate = options.requests as f64 / raw_wall.as_secs_f64();
    let ratio = api_rate / raw_rate;
    let api_p99 = percentile(&api_lat, 99.0);
    let mut table = Table::new(
        &format!(
            "api: {} creates, {} concurrent clients",
            options.requests, options.clients
        ),
        &["path", "per second", "p50 ms", "p99 ms", "target"],
    );
    table.row(vec![
        "POST /v1/databases (control plane, --no-reconcile)".into(),
        format!("{api_rate:.0}"),
        fmt_opt(percentile(&api_lat, 50.0), 1),
        fmt_opt(api_p99, 1),
        format!(
            "p99 < 50 ms: {}",
            verdict(api_p99.is_some_and(|p| p < 50.0))
        ),
    ]);
    table.row(vec![
        "raw etcd txn (compare + 3 puts, etcd-client)".into(),
        format!("{raw_rate:.0}"),
        fmt_opt(percentile(&raw_lat, 50.0), 1),
        fmt_opt(percentile(&raw_lat, 99.0), 1),
        String::new(),
    ]);
    table.row(vec![
        "**ratio API / raw etcd**".into(),
        format!("**{ratio:.2}**"),
        String::new(),
        String::new(),
        format!(">= 0.50: {}", verdict(ratio >= 0.5)),
    ]);
    table.note(size_note);
    table.note(format!(
        "API: {:.1}s wall; raw etcd: {:.1}s wall; one etcd member on the same 2 cores as the control plane and the clients",
        api_wall.as_secs_f64(),
        raw_wall.as_secs_f64()
    ));
    table.note(format!(
        "etcd requests per API create: {:.2} ({}); the raw path is 1 Txn",
        etcd_per_create.total() / options.requests as f64,
        etcd_per_create.summary()
    ));
    if let Some(p) = profile {
        table.note(format!(
            "perf profile of the control plane during the API run:\n\n```\n{p}\n```"
        ));
    }
    Ok(table)
}
