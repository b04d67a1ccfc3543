//! `deploy/dev/up` and `down` as a new user runs them on a busy machine (issue 14, item 6):
//! every core kept busy, and every process of the fleet slow to exec its program after the
//! fork (a wrapper sleeps first), which is the window in which the old pid-file check took a
//! starting etcd for a stale one. `up` must come up, a second `up` after a run that left its
//! processes without pid files must take them back rather than start twice or find its ports
//! taken, and `down` must leave nothing behind.
//!
//! It runs the real scripts on a fleet of its own beside any dev fleet a developer runs: its
//! own state dir, ports, host ids and fleet name (deploy/dev/lib.sh's BERTH_DEV_* overrides),
//! and the debug binaries the test build already made (BERTH_DEV_SKIP_BUILD: nothing is
//! installed or built, so no wait on cargo's build lock either).
//!
//! Bounded everywhere: each script run has a deadline after which its process group is
//! killed; the load is threads of this process, which stop at their own deadline, when the
//! test drops them (panics included) and, at the latest, with the process. Whatever the
//! outcome, a guard runs `down` and kills what still names the state dir. Progress goes to
//! stderr as it happens (`cargo nextest run --no-capture` shows it live).

use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Upper bound for one run of `up` (its own waits add up to about 4.5 minutes) or `down`.
/// Reaching it fails the test; how long a run took is printed, never asserted.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);
/// The load stops by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(900);
/// How long the exec of every fleet process is held back after its fork.
const SLOW_FORK_SECONDS: u32 = 2;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn progress(started: Instant, what: impl std::fmt::Display) {
    eprintln!(
        "[dev_fleet +{:>5.1}s] {what}",
        started.elapsed().as_secs_f64()
    );
}

/// A debug binary of this workspace as the test build left it. `cargo nextest run
/// --workspace` builds both (their crates have integration tests); building here would wait
/// on cargo's lock behind whatever else builds on the machine.
fn debug_binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --bin {name})",
        path.display()
    );
    path
}

/// A script named `name` in `dir` that sleeps, then execs `real`: a fork that is slow to exec.
fn slow_exec(dir: &Path, name: &str, real: &Path) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nsleep {SLOW_FORK_SECONDS}\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Busy threads, two per core, in this process: they cannot outlive it, stop by themselves
/// after [`LOAD_LIMIT`], and stop when dropped (also while a panic unwinds).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Load {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + LOAD_LIMIT;
        let threads = (0..2 * cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n = std::hint::black_box(n.wrapping_add(1));
                        if n.is_multiple_of(1 << 20) && Instant::now() >= deadline {
                            break;
                        }
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Live processes whose arguments mention `needle`, as (pid, command line).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let own = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == own {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let args = String::from_utf8_lossy(&raw).replace('\0', " ");
            if args.contains(needle) {
                found.push((name.parse().unwrap(), args));
            }
        }
    }
    found
}

/// Ports `BASE .. BASE+17` as deploy/dev/lib.sh uses them (etcd, peer, API, registry,
/// agents at +11..+13, their metrics at +15..+17): a base where all of them are free now,
/// below the ephemeral range.
fn free_port_base() -> u16 {
    for _ in 0..200 {
        let base = 20000 + (rand::random::<u16>() % 600) * 20;
        let used = [0u16, 1, 2, 3, 11, 12, 13, 15, 16, 17];
        if used
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return base;
        }
    }
    panic!("no free range of 18 ports found below 32000");
}

/// One fleet of the dev scripts in a scratch dir; dropping it takes it down, however the
/// test ended.
struct DevFleet {
    started: Instant,
    scratch: tempfile::TempDir,
    state: PathBuf,
    env: Vec<(String, String)>,
    down: bool,
}

impl DevFleet {
    fn new(started: Instant) -> DevFleet {
        let scratch = tempfile::Builder::new()
            .prefix("berth-devfleet-")
            .tempdir()
            .unwrap();
        let state = scratch.path().join("state");
        let bin = scratch.path().join("bin");
        let path_dir = scratch.path().join("path");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&path_dir).unwrap();
        for name in ["berth-control-plane", "berth-agent"] {
            slow_exec(&bin, name, &debug_binary(name));
        }
        let etcd = Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .unwrap();
        let etcd = String::from_utf8(etcd.stdout).unwrap();
        assert!(!etcd.trim().is_empty(), "etcd is not installed");
        slow_exec(&path_dir, "etcd", Path::new(etcd.trim()));
        let base = free_port_base();
        let prefix = format!("dv{:04x}", rand::random::<u16>());
        progress(
            started,
            format!(
                "fleet in {}: ports {base}.., hosts {prefix}-1..3",
                state.display()
            ),
        );
        let env = vec![
            ("BERTH_DEV_DIR".into(), state.display().to_string()),
            ("BERTH_DEV_PORT_BASE".into(), base.to_string()),
            ("BERTH_DEV_HOST_PREFIX".into(), prefix.clone()),
            ("BERTH_DEV_FLEET".into(), prefix),
            ("BERTH_DEV_BIN_DIR".into(), bin.display().to_string()),
            ("BERTH_DEV_SKIP_BUILD".into(), "1".into()),
            (
                "PATH".into(),
                format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap()),
            ),
        ];
        DevFleet {
            started,
            scratch,
            state,
            env,
            down: false,
        }
    }

    /// The value this fleet gives the environment variable `name`.
    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).expect(name).1
    }

    fn state_arg(&self) -> String {
        self.state.display().to_string()
    }

    /// Runs `script` with the fleet's environment, its output going to a file (not a pipe: a
    /// daemon that kept a pipe open would make reading it to the end wait for the daemon)
    /// that is echoed as it grows. Fails the test after [`SCRIPT_LIMIT`], having killed the
    /// script's process group. Returns whether it succeeded and its output.
    fn run(&self, script: &str) -> (bool, String) {
        let log_path = self.scratch.path().join(format!(
            "{}.{}.log",
            script.replace('/', "-"),
            rand::random::<u32>()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        progress(self.started, format!("running {script}"));
        let began = Instant::now();
        let mut child = Command::new(workspace().join(script))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own group, so a run past its limit is killed with every child it forked.
            .process_group(0)
            .spawn()
            .unwrap();
        let mut reader = std::fs::File::open(&log_path).unwrap();
        let mut echoed = 0u64;
        let echo = |reader: &mut std::fs::File, echoed: &mut u64| {
            let mut new = String::new();
            reader.seek(std::io::SeekFrom::Start(*echoed)).unwrap();
            *echoed += reader.read_to_string(&mut new).unwrap() as u64;
            for line in new.lines() {
                progress(self.started, format!("  {script}: {line}"));
            }
        };
        let status = loop {
            echo(&mut reader, &mut echoed);
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if began.elapsed() > SCRIPT_LIMIT {
                // SAFETY: kill(2) on the process group we created; no memory is involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                echo(&mut reader, &mut echoed);
                panic!("{script} did not finish within {SCRIPT_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        echo(&mut reader, &mut echoed);
        progress(
            self.started,
            format!(
                "{script} ended ({status}) after {:.1}s",
                began.elapsed().as_secs_f64()
            ),
        );
        (
            status.success(),
            std::fs::read_to_string(&log_path).unwrap(),
        )
    }
}

impl Drop for DevFleet {
    fn drop(&mut self) {
        if !self.down {
            progress(self.started, "cleaning up: deploy/dev/down");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run("deploy/dev/down")
            }));
        }
        for (pid, args) in processes_mentioning(&self.state_arg()) {
            progress(self.started, format!("killing leftover {pid}: {args}"));
            // SAFETY: kill(2) on a pid just read from /proc; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn dev_up_twice_and_down_under_cpu_load_with_a_slow_fork() {
    let started = Instant::now();
    let mut fleet = DevFleet::new(started);
    let state_arg = fleet.state_arg();

    let load = Load::start();
    progress(
        started,
        format!("load: {} busy threads", load.threads.len()),
    );
    let (ok, log) = fleet.run("deploy/dev/up");
    assert!(ok, "the first up failed:\n{log}");
    assert!(log.contains("is up"), "{log}");
    // The summary names this fleet's hosts, and its stop command, copied as printed, stops
    // this fleet rather than the default one: it carries every BERTH_DEV_* variable.
    let prefix = fleet.var("BERTH_DEV_HOST_PREFIX");
    assert!(
        log.contains(&format!(" {prefix}-1..3 on 127.0.0.1:")),
        "{log}"
    );
    let stop = log
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("stop with"))
        .unwrap_or_else(|| panic!("no stop command in:\n{log}"));
    for (name, value) in fleet
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("BERTH_DEV_"))
    {
        assert!(
            stop.contains(&format!("{name}={value} ")),
            "the stop command lacks {name}={value}: {stop}"
        );
    }
    assert!(stop.trim_end().ends_with("/deploy/dev/down"), "{stop}");

    // What a run that died half way leaves: processes without pid files.
    for f in std::fs::read_dir(fleet.state.join("run"))
        .unwrap()
        .flatten()
    {
        std::fs::remove_file(f.path()).unwrap();
    }
    let before = processes_mentioning(&state_arg);
    progress(
        started,
        format!("pid files deleted; {} fleet processes", before.len()),
    );
    let (ok, log) = fleet.run("deploy/dev/up");
    assert!(ok, "the second up failed:\n{log}");
    assert!(log.contains("without a valid pid file"), "{log}");
    let after = processes_mentioning(&state_arg);
    assert_eq!(
        after.len(),
        before.len(),
        "the second up started processes again: {after:#?}"
    );

    let (ok, log) = fleet.run("deploy/dev/down");
    fleet.down = ok;
    drop(load);
    assert!(ok, "down failed:\n{log}");
    let left = processes_mentioning(&state_arg);
    assert!(left.is_empty(), "down left processes: {left:#?}");
    assert!(!fleet.state.exists(), "down left {}", fleet.state.display());
    progress(started, "done");
}
