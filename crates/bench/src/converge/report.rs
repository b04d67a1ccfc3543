//! The converge table: both berth variants and the alternatives, with every ratio taken against each berth
//! variant from the same run.

use crate::stats::{Table, median, verdict};

use super::berth::Measured;
use super::engine::POLL;
use super::template::{Captured, duration_ns};

/// The alternatives' round times (s), each on the machine's engine.
pub struct Alternatives {
    pub compose: Vec<f64>,
    pub swarm: Vec<f64>,
    pub floor: Vec<f64>,
}

fn fmt_rounds(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table of `rounds` rounds: `shared` is berth on the machine's engine (what the targets are about, since
/// the alternatives run there too), `per_host` berth on the engine-per-host fleet.
pub fn table(
    rounds: usize,
    shared: &Measured,
    per_host: &Measured,
    alt: &Alternatives,
    cap: &Captured,
) -> Table {
    let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    let (o, p) = (m(&shared.times), m(&per_host.times));
    let (c, s, f) = (m(&alt.compose), m(&alt.swarm), m(&alt.floor));
    let mut table = Table::new(
        &format!(
            "converge: 1 Postgres node + mcp, postgrest, rag over 3 hosts, median of {rounds} rounds"
        ),
        &[
            "variant",
            "median s",
            "rounds (s)",
            "ours / variant",
            "ours, engine per host / variant",
            "target (ours)",
        ],
    );
    table.row(vec![
        "berth, shared engine (POST until the task completed)".into(),
        format!("{o:.2}"),
        fmt_rounds(&shared.times),
        "1.00".into(),
        format!("{:.2}", p / o),
        String::new(),
    ]);
    table.row(vec![
        "berth, engine per host (a namespace, address and engine per host; other hosts at published ports)"
            .into(),
        format!("{p:.2}"),
        fmt_rounds(&per_host.times),
        format!("{:.2}", o / p),
        "1.00".into(),
        String::new(),
    ]);
    let alternatives = [
        (
            "docker-compose 1.29 (up pg, poll health, roles, up services, poll health)",
            c,
            &alt.compose,
            Some((1.0, "1.0")),
        ),
        (
            "docker service create, single-node swarm",
            s,
            &alt.swarm,
            None,
        ),
        (
            "floor: raw Engine API create+start, first healthy",
            f,
            &alt.floor,
            Some((1.15, "1.15")),
        ),
    ];
    for (name, median, times, target) in alternatives {
        table.row(vec![
            name.into(),
            format!("{median:.2}"),
            fmt_rounds(times),
            format!("**{:.2}**", o / median),
            format!("{:.2}", p / median),
            target.map_or(String::new(), |(t, written)| {
                format!("<= {written}: {}", verdict(o / median <= t))
            }),
        ]);
    }
    for (name, m) in [("shared engine", shared), ("engine per host", per_host)] {
        if !m.failures.is_empty() {
            table.note(format!(
                "berth ({name}) creates that FAILED and were run again ({} of {}): {}",
                m.failures.len(),
                m.failures.len() + m.times.len(),
                m.failures.join("; ")
            ));
        }
    }
    for (name, m) in [("shared engine", shared), ("engine per host", per_host)] {
        if !m.timeline.is_empty() {
            table.note(format!(
                "berth ({name}), its last round's task log at offsets from the POST:\n\n```\n{}\n```",
                m.timeline.join("\n")
            ));
        }
    }
    for (name, m) in [("shared engine", shared), ("engine per host", per_host)] {
        table.note(format!(
            "berth ({name}): postgrest on host-2 connects to `{}`",
            m.rest_connection
                .as_deref()
                .unwrap_or("(its config was not readable)")
        ));
    }
    let hc = &cap.containers[1].health;
    table.note(format!(
        "every variant runs the same images, commands, environment, users and health checks (service interval {}, start period {}); the alternatives run berth's shared-engine containers (aliases and copied config files included) on the machine's engine, and health is polled every {} ms through the Engine API in every non-berth variant",
        duration_ns(hc.interval),
        duration_ns(hc.start_period),
        POLL.as_millis()
    ));
    table.note(
        "the two berth variants' rounds alternate (shared, then engine per host) so both see the same load on the machine; the engine-per-host fleet (deploy/fleet/hosts, its engines started and images loaded) is up before the first round and down before the alternatives run"
            .into(),
    );
    table
}
