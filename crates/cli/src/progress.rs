//! The progress display of a followed task: one line per step as the task log reports it.
//!
//! The reconciler logs a step twice (crates/control-plane/src/reconciler/steps.rs): when it
//! starts (`fields.status = "started"`) and when it ends (`"done"` or `"failed"`, with
//! `duration_ms`, and `error` when failed); `step`, `host_id` and `instance_id` name the step.
//! In a terminal a started step is a spinner that turns into `✓ <message> (1.4s)` or
//! `✗ <message>: <error>`; elsewhere (a pipe, CI) the same as plain lines, the start as
//! `→ <message>`. An agent's progress lines (`host_id` and `instance_id` but no `status`,
//! relayed by crates/control-plane/src/reconciler/relay.rs) belong to the running step of
//! that instance: they show next to its spinner, or indented under its start. Other log
//! lines are printed as they are.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use spec::TaskLogEntry;

/// What pairs a step's start with its end: the `step`, `host_id` and `instance_id` fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepKey {
    pub step: String,
    pub host_id: String,
    pub instance_id: String,
}

/// One log entry, as the display sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        key: StepKey,
        message: String,
    },
    /// `message` is the start's message when the start was seen, else the end's own.
    Done {
        key: StepKey,
        message: String,
        duration: Option<Duration>,
    },
    Failed {
        key: StepKey,
        message: String,
        error: String,
    },
    /// A progress line of a running step.
    Detail {
        key: StepKey,
        message: String,
    },
    Line(String),
}

/// Pairs the steps' ends with their starts.
#[derive(Debug, Default)]
pub struct Steps {
    started: HashMap<StepKey, String>,
}

impl Steps {
    /// The event an entry is; a step's end is named by the message its start had.
    pub fn event(&mut self, entry: &TaskLogEntry) -> Event {
        let f = &entry.fields;
        let Some(status) = str_field(f, "status") else {
            return match self.running(f) {
                Some(key) => Event::Detail {
                    key,
                    message: entry.message.clone(),
                },
                None => Event::Line(entry.message.clone()),
            };
        };
        let key = StepKey {
            step: str_field(f, "step").unwrap_or_default().to_string(),
            host_id: str_field(f, "host_id").unwrap_or_default().to_string(),
            instance_id: str_field(f, "instance_id").unwrap_or_default().to_string(),
        };
        match status {
            "started" => {
                self.started.insert(key.clone(), entry.message.clone());
                Event::Started {
                    key,
                    message: entry.message.clone(),
                }
            }
            "done" => Event::Done {
                message: self.started.remove(&key).unwrap_or(entry.message.clone()),
                key,
                duration: f
                    .get("duration_ms")
                    .and_then(Value::as_u64)
                    .map(Duration::from_millis),
            },
            "failed" => {
                let started = self.started.remove(&key);
                let error = str_field(f, "error").unwrap_or_default().to_string();
                Event::Failed {
                    // Without its start, the end's own message already holds the error.
                    message: started.unwrap_or(entry.message.clone()),
                    key,
                    error,
                }
            }
            _ => Event::Line(entry.message.clone()),
        }
    }

    /// The running step of the entry's host and instance, if one is.
    fn running(&self, f: &Map<String, Value>) -> Option<StepKey> {
        let (host, instance) = (str_field(f, "host_id")?, str_field(f, "instance_id")?);
        self.started
            .keys()
            .find(|k| k.host_id == host && k.instance_id == instance)
            .cloned()
    }

    /// The message a running step started with.
    pub fn message_of(&self, key: &StepKey) -> Option<&String> {
        self.started.get(key)
    }

    /// Messages of steps that started and have not ended, in no particular order.
    pub fn unfinished(&self) -> impl Iterator<Item = &String> {
        self.started.values()
    }
}

fn str_field<'a>(f: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    f.get(name).and_then(Value::as_str)
}

/// `1.4s` under a minute, `2m05s` above.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// The line an event is printed as when there is no spinner; None: nothing to print.
pub fn plain_line(event: &Event) -> String {
    match event {
        Event::Started { message, .. } => format!("→ {message}"),
        Event::Done {
            message,
            duration: Some(d),
            ..
        } => format!("✓ {message} ({})", fmt_duration(*d)),
        Event::Done { message, .. } => format!("✓ {message}"),
        Event::Failed { message, error, .. } if error.is_empty() => format!("✗ {message}"),
        Event::Failed { message, error, .. } => format!("✗ {message}: {error}"),
        Event::Detail { message, .. } => format!("  {message}"),
        Event::Line(message) => message.clone(),
    }
}

/// Where and how a followed task's log is shown.
pub struct Progress {
    steps: Steps,
    mode: Mode,
}

enum Mode {
    /// Spinners that turn into lines (a terminal).
    Live {
        multi: MultiProgress,
        bars: HashMap<StepKey, ProgressBar>,
    },
    /// Plain lines.
    Plain(Box<dyn Write>),
    /// Each entry as a line of JSON (`logs -f -o json`).
    Ndjson(Box<dyn Write>),
    /// Nothing (`apply --wait -o json` when no one watches stderr).
    Quiet,
}

impl Progress {
    /// Spinners on stdout when it is a terminal, else plain lines on it.
    pub fn stdout() -> Progress {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            Progress::live(ProgressDrawTarget::stdout())
        } else {
            Progress::plain(Box::new(std::io::stdout()))
        }
    }

    /// Spinners on stderr when it is a terminal, else nothing: for `-o json`, whose stdout
    /// carries only the final JSON.
    pub fn stderr_if_terminal() -> Progress {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Progress::live(ProgressDrawTarget::stderr())
        } else {
            Progress::with_mode(Mode::Quiet)
        }
    }

    /// Plain lines on `out`.
    pub fn plain(out: Box<dyn Write>) -> Progress {
        Progress::with_mode(Mode::Plain(out))
    }

    /// The entries as NDJSON on `out`.
    pub fn ndjson(out: Box<dyn Write>) -> Progress {
        Progress::with_mode(Mode::Ndjson(out))
    }

    fn live(target: ProgressDrawTarget) -> Progress {
        Progress::with_mode(Mode::Live {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
        })
    }

    fn with_mode(mode: Mode) -> Progress {
        Progress {
            steps: Steps::default(),
            mode,
        }
    }

    /// Shows one log entry. Output errors (a closed pipe) are ignored: the task goes on.
    pub fn entry(&mut self, entry: &TaskLogEntry) {
        let event = self.steps.event(entry);
        match &mut self.mode {
            Mode::Plain(out) => {
                let _ = writeln!(out, "{}", plain_line(&event));
                let _ = out.flush();
            }
            Mode::Ndjson(out) => {
                if let Ok(line) = serde_json::to_string(entry) {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Mode::Quiet => {}
            Mode::Live { multi, bars } => match &event {
                Event::Started { key, message } => {
                    let bar = multi.add(ProgressBar::new_spinner());
                    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                        bar.set_style(style);
                    }
                    bar.set_message(message.clone());
                    bar.enable_steady_tick(Duration::from_millis(100));
                    if let Some(old) = bars.insert(key.clone(), bar) {
                        old.finish_and_clear();
                        multi.remove(&old);
                    }
                }
                Event::Done { key, .. } | Event::Failed { key, .. } => {
                    if let Some(bar) = bars.remove(key) {
                        bar.finish_and_clear();
                        multi.remove(&bar);
                    }
                    let _ = multi.println(plain_line(&event));
                }
                Event::Detail { key, message } => {
                    if let (Some(bar), Some(step)) = (bars.get(key), self.steps.message_of(key)) {
                        bar.set_message(format!("{step} · {message}"));
                    }
                }
                Event::Line(_) => {
                    let _ = multi.println(plain_line(&event));
                }
            },
        }
    }

    /// Ends the display: a step still spinning (the task ended without logging its end) is
    /// printed as unfinished.
    pub fn finish(&mut self) {
        let unfinished: Vec<String> = self
            .steps
            .unfinished()
            .map(|m| format!("· {m}: no end in the log"))
            .collect();
        match &mut self.mode {
            Mode::Live { multi, bars } => {
                for (_, bar) in bars.drain() {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                for line in unfinished {
                    let _ = multi.println(line);
                }
                let _ = multi.clear();
            }
            Mode::Plain(out) => {
                for line in unfinished {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
            Mode::Ndjson(_) | Mode::Quiet => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(message: &str, fields: Value) -> TaskLogEntry {
        TaskLogEntry {
            id: "e".into(),
            timestamp: chrono::Utc::now(),
            message: message.into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    fn step(status: &str, extra: Value) -> Value {
        let mut f = json!({"step": "apply", "host_id": "host-1", "instance_id": "example-mcp-server-host-1", "status": status});
        f.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        f
    }

    /// What the plain display prints for `entries`.
    fn plain(entries: &[TaskLogEntry]) -> String {
        #[derive(Clone, Default)]
        struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.borrow_mut().write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let mut p = Progress::plain(Box::new(out.clone()));
        for e in entries {
            p.entry(e);
        }
        p.finish();
        String::from_utf8(out.0.borrow().clone()).unwrap()
    }

    #[test]
    fn a_step_is_a_start_line_then_its_message_with_the_duration() {
        let out = plain(&[
            entry("task started: create of database example", json!({})),
            entry(
                "creating service instance mcp-server on host-1",
                step("started", json!({})),
            ),
            entry(
                "creating service instance mcp-server on host-1: done in 1.4s",
                step("done", json!({"duration_ms": 1432})),
            ),
            entry("database example is available", json!({})),
        ]);
        assert_eq!(
            out,
            "task started: create of database example\n\
             → creating service instance mcp-server on host-1\n\
             ✓ creating service instance mcp-server on host-1 (1.4s)\n\
             database example is available\n"
        );
    }

    #[test]
    fn a_failed_step_shows_its_error() {
        let out = plain(&[
            entry(
                "creating service instance mcp-server on host-1",
                step("started", json!({})),
            ),
            entry(
                "creating service instance mcp-server on host-1: failed after 0.2s: image missing",
                step(
                    "failed",
                    json!({"duration_ms": 200, "error": "image missing"}),
                ),
            ),
        ]);
        assert_eq!(
            out.lines().last().unwrap(),
            "✗ creating service instance mcp-server on host-1: image missing"
        );
    }

    #[test]
    fn steps_pair_by_step_host_and_instance() {
        let mut steps = Steps::default();
        let on = |host: &str, status: &str| json!({"step": "apply", "host_id": host, "instance_id": "i", "status": status});
        steps.event(&entry("on host-1", on("host-1", "started")));
        steps.event(&entry("on host-2", on("host-2", "started")));
        let Event::Done { message, .. } = steps.event(&entry("x: done", on("host-2", "done")))
        else {
            panic!("not done")
        };
        assert_eq!(message, "on host-2");
        assert_eq!(steps.unfinished().collect::<Vec<_>>(), ["on host-1"]);
    }

    #[test]
    fn an_end_without_its_start_keeps_its_own_message() {
        // Following from a cursor can begin between a start and its end.
        let mut steps = Steps::default();
        let e = steps.event(&entry(
            "creating roles of service mcp-server on primaries: done in 0.3s",
            step("done", json!({"duration_ms": 300})),
        ));
        assert_eq!(
            plain_line(&e),
            "✓ creating roles of service mcp-server on primaries: done in 0.3s (0.3s)"
        );
    }

    #[test]
    fn a_step_that_never_ended_is_reported_at_the_end() {
        let out = plain(&[entry("removing x on host-1", step("started", json!({})))]);
        assert_eq!(
            out,
            "→ removing x on host-1\n· removing x on host-1: no end in the log\n"
        );
    }

    #[test]
    fn durations_read_in_seconds_then_minutes() {
        assert_eq!(fmt_duration(Duration::from_millis(1432)), "1.4s");
        assert_eq!(fmt_duration(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn an_agent_s_progress_lines_go_under_their_step() {
        let progress = |m: &str| {
            entry(
                m,
                json!({"host_id": "host-1", "instance_id": "example-mcp-server-host-1", "phase": "x"}),
            )
        };
        let out = plain(&[
            entry(
                "creating service instance mcp-server on host-1",
                step("started", json!({})),
            ),
            progress("writing config files"),
            entry(
                "creating service instance mcp-server on host-1: done in 1.4s",
                step("done", json!({"duration_ms": 1400})),
            ),
            progress("a late line"),
        ]);
        assert_eq!(
            out,
            "→ creating service instance mcp-server on host-1\n  writing config files\n\
             ✓ creating service instance mcp-server on host-1 (1.4s)\na late line\n"
        );
    }
}
