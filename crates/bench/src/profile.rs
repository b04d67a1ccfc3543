//! `--profile`: samples a process with `perf record` while a benchmark measures it, and reports where its
//! time went, by function with the callers of each hot one, so a missed target names its bottleneck.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Profile {
    perf: Child,
    data: PathBuf,
}

impl Profile {
    /// Starts sampling `pid`; `None` when perf cannot run here (the report then says nothing).
    pub fn start(pid: u32, dir: &Path) -> Option<Profile> {
        let data = dir.join("perf.data");
        // DWARF unwinding: release builds have no frame pointers, so `-g` alone stops at the first inlined
        // closure. 99 Hz keeps the sample file small over a minute-long run.
        let perf = Command::new("perf")
            .args(["record", "-F", "99", "--call-graph", "dwarf,32768"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Profile { perf, data })
    }

    /// Stops sampling and renders two short lists: the hottest functions by self time, and berth's own
    /// functions by inclusive time (what they and everything they call cost), which names the code path.
    pub fn report(mut self) -> String {
        // SAFETY: SIGINT to a child we spawned and have not reaped: perf writes its data and exits.
        unsafe {
            libc::kill(self.perf.id() as i32, libc::SIGINT);
        }
        let _ = self.perf.wait();
        let flat = self.perf_report(&["--no-children", "--sort", "dso,symbol"], |_| true, 20);
        let ours = self.perf_report(&["--children", "--sort", "symbol"], is_ours, 20);
        format!("self time:\n{flat}\n\ninclusive time, berth's functions:\n{ours}")
    }

    fn perf_report(&self, sort: &[&str], keep: impl Fn(&str) -> bool, lines: usize) -> String {
        let out = Command::new("perf")
            .args(["report", "--stdio", "-g", "none", "--percent-limit", "1"])
            .args(sort)
            .arg("-i")
            .arg(&self.data)
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && keep(l))
                .map(|l| l.trim_end().chars().take(150).collect::<String>())
                .take(lines)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("perf report failed: {e}"),
        }
    }
}

/// Whether a report line's symbol is a function of the workspace (not a runtime wrapper around one).
fn is_ours(line: &str) -> bool {
    let symbol = line.split("[.] ").nth(1).unwrap_or_default();
    let symbol = symbol.trim_start_matches('<');
    OUR_CRATES.iter().any(|c| symbol.starts_with(c))
}

/// Symbol prefixes of the workspace's crates.
const OUR_CRATES: &[&str] = &[
    "control_plane::",
    "store::",
    "spec::",
    "plan::",
    "pki::",
    "agent_tls::",
];
