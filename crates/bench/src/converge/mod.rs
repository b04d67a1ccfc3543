//! converge: one database (one Postgres node) and three services (mcp, postgrest, rag) over three hosts, from
//! submission until every instance runs healthy, through berth and through what a user would pick instead:
//! docker compose, `docker service create` on a single-node swarm, and raw Docker API calls (the floor).
//!
//! berth runs twice, round for round: with every host's agent on the machine's one engine, and on an
//! engine-per-host fleet where each host has its own namespace, address and engine, so instances on other
//! hosts are reached at host addresses and published ports ([`berth`]).
//!
//! Every alternative runs the same containers as berth on the machine's engine ([`template`]) and does the
//! same ordered work berth does: Postgres up and healthy, then the services' managed roles created with the
//! same SQL (`psql` on stdin through a Docker exec), then the services, waited on until healthy.

pub(crate) mod berth;
mod compose;
pub(crate) mod engine;
mod floor;
mod report;
mod swarm;
mod template;

use std::path::Path;

use anyhow::{Context, Result, bail};

use agent::runtime::DockerRuntime;

use crate::stats::Table;

use berth::{Berth, Measured, Topology};
use report::Alternatives;
use template::{Captured, capture};

/// Runs `rounds` rounds of every variant and reports them.
pub async fn run(rounds: usize) -> Result<Table> {
    let rounds = rounds.max(1);
    let engine = DockerRuntime::connect(None)?;
    let shared = Berth::start(Topology::SharedEngine).await?;
    let dir = shared.cluster.stack.dir.path().join("alternatives");
    std::fs::create_dir_all(&dir)?;
    let (ours, per_host, cap) = {
        // Dropped at the end of this block: its fleet is down before the alternatives run.
        let net = Berth::start(Topology::EnginePerHost).await?;
        berth_rounds(&engine, [&shared, &net], rounds, &dir).await?
    };
    let alternatives = alternatives(&engine, &cap, rounds, &dir).await?;
    Ok(report::table(rounds, &ours, &per_host, &alternatives, &cap))
}

/// The berth variants' rounds, alternating so that both see the same load on the machine; the first
/// converged round of the first variant (berth on the machine's engine) is captured for the alternatives.
/// A create that fails is reported and not timed; the round is run again, within a bound.
async fn berth_rounds(
    engine: &DockerRuntime,
    variants: [&Berth; 2],
    rounds: usize,
    dir: &Path,
) -> Result<(Measured, Measured, Captured)> {
    let mut measured = [Measured::default(), Measured::default()];
    let mut captured = None;
    for r in 0..rounds * 3 {
        for (berth, m) in variants.iter().zip(measured.iter_mut()) {
            if m.times.len() == rounds {
                continue;
            }
            let db = berth.db(r);
            let converged = berth.measure(&db, m).await?;
            if converged && captured.is_none() && berth.topology == Topology::SharedEngine {
                captured = Some(capture(berth, engine, &db, &dir.join("template")).await?);
            }
            berth.delete(&db).await?;
        }
    }
    for (berth, m) in variants.iter().zip(&measured) {
        if m.times.len() < rounds {
            bail!(
                "berth ({:?}) converged only {} of {} rounds: {:?}",
                berth.topology,
                m.times.len(),
                rounds,
                m.failures
            );
        }
    }
    let [shared, per_host] = measured;
    Ok((shared, per_host, captured.context("no round captured")?))
}

/// The floor, compose and swarm, `rounds` rounds each, everything a round made removed after it.
async fn alternatives(
    engine: &DockerRuntime,
    cap: &Captured,
    rounds: usize,
    dir: &Path,
) -> Result<Alternatives> {
    let docker = engine.client();
    let pid = std::process::id();
    let mut out = Alternatives {
        compose: Vec::new(),
        swarm: Vec::new(),
        floor: Vec::new(),
    };
    for r in 0..rounds {
        let tag = format!("bench-floor-{pid}-{r}");
        let took = floor::round(engine, cap, &tag, dir).await;
        floor::cleanup(&docker, &tag).await;
        out.floor.push(took?.as_secs_f64());
    }
    for r in 0..rounds {
        let tag = format!("benchcompose{pid}x{r}");
        let took = compose::round(engine, cap, &tag, dir).await;
        compose::cleanup(&tag, dir);
        out.compose.push(took?.as_secs_f64());
    }
    let _swarm = swarm::Swarm::init()?;
    for r in 0..rounds {
        let tag = format!("bench-swarm-{pid}-{r}");
        let took = swarm::round(engine, cap, &tag, dir).await;
        swarm::cleanup(&tag);
        out.swarm.push(took?.as_secs_f64());
    }
    Ok(out)
}
