//! The live view of `manifold build` on a terminal, as BuildKit's tty mode: per platform, the
//! running steps with their timers and last lines of output; finished steps collapse to one line
//! (CACHED, EMULATED, time); a failed step's output is shown in full at the end, before the
//! error.
//!
//! [`State`] is the view's model (no terminal); [`LiveView`] draws it with indicatif.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::engine::engine::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How `build` shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    RawJson,
    Quiet,
}

/// The mode for `--progress` (already validated by clap): `auto` is the live view when standard
/// error is a terminal, plain lines otherwise.
pub fn mode(progress: &str, quiet: bool, stderr_is_terminal: bool) -> Mode {
    match progress {
        _ if quiet => Mode::Quiet,
        "quiet" => Mode::Quiet,
        "tty" => Mode::Tty,
        "plain" => Mode::Plain,
        "rawjson" => Mode::RawJson,
        _ if stderr_is_terminal => Mode::Tty,
        _ => Mode::Plain,
    }
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Output lines shown under a running step.
const TAIL: usize = 6;
/// Output lines kept per running step, for the report when it fails.
const KEPT: usize = 200;

/// A step: platform, stage, index.
pub type Key = (String, String, usize);

#[derive(Debug)]
pub struct Running {
    /// `[linux/amd64 stage 2/3] RUN ...` (first line of the instruction).
    pub label: String,
    pub started: Instant,
    /// The last [`KEPT`] lines it wrote.
    pub lines: VecDeque<String>,
}

impl Running {
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(TAIL))
    }
}

/// What the view shows, fed by engine events.
#[derive(Debug, Default)]
pub struct State {
    pub running: BTreeMap<Key, Running>,
    /// Steps finished per platform (for the platform's header).
    pub done: BTreeMap<String, usize>,
    /// When each platform was first seen.
    pub since: BTreeMap<String, Instant>,
    /// Shown once the view is gone: each failed step's output.
    pub report: Vec<String>,
}

fn label(platform: &str, stage: &str, index: usize, total: usize, text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    format!("[{platform} {stage} {index}/{total}] {first}")
}

/// Control characters would move the cursor under the view.
fn printable(line: &str) -> String {
    console::strip_ansi_codes(line)
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

impl State {
    /// Applies an event; returns the lines to print above the live area (collapsed steps).
    pub fn apply(&mut self, e: &Event) -> Vec<String> {
        match e {
            Event::StepStart {
                platform,
                stage,
                index,
                total,
                text,
                ..
            } => {
                self.seen(platform);
                self.running.insert(
                    (platform.clone(), stage.clone(), *index),
                    Running {
                        label: label(platform, stage, *index, *total, text),
                        started: Instant::now(),
                        lines: VecDeque::new(),
                    },
                );
                Vec::new()
            }
            Event::Output {
                platform,
                stage,
                index,
                total,
                line,
                ..
            } => {
                self.seen(platform);
                let r = self
                    .running
                    .entry((platform.clone(), stage.clone(), *index))
                    .or_insert_with(|| Running {
                        label: label(platform, stage, *index, *total, ""),
                        started: Instant::now(),
                        lines: VecDeque::new(),
                    });
                if r.lines.len() == KEPT {
                    r.lines.pop_front();
                }
                r.lines.push_back(printable(line));
                Vec::new()
            }
            Event::Step {
                platform,
                stage,
                index,
                total,
                text,
                emulated,
                cached,
                seconds,
            } => {
                self.seen(platform);
                self.running
                    .remove(&(platform.clone(), stage.clone(), *index));
                *self.done.entry(platform.clone()).or_default() += 1;
                let mut marks = String::new();
                if *cached {
                    marks.push_str("CACHED ");
                }
                if *emulated {
                    marks.push_str("EMULATED ");
                }
                let l = label(platform, stage, *index, *total, text);
                vec![format!("=> {marks}{l} {seconds:.1}s")]
            }
            Event::Failed { platform, .. } => {
                let mut out = Vec::new();
                for (_, r) in self.take(platform) {
                    let secs = r.started.elapsed().as_secs_f64();
                    out.push(format!("=> ERROR {} {secs:.1}s", r.label));
                    let mut rep = format!("------\n > {}:\n", r.label);
                    for l in &r.lines {
                        rep.push_str(&format!("   {l}\n"));
                    }
                    rep.push_str("------");
                    self.report.push(rep);
                }
                // The error itself is not repeated: the build returns it, and it is printed in
                // full right after this report.
                out
            }
            Event::Cancelled { platform } => {
                let mut out: Vec<String> = self
                    .take(platform)
                    .into_iter()
                    .map(|(_, r)| {
                        let secs = r.started.elapsed().as_secs_f64();
                        format!("=> CANCELED {} {secs:.1}s", r.label)
                    })
                    .collect();
                if out.is_empty() {
                    out.push(format!("=> CANCELED [{platform}] after the first failure"));
                }
                out
            }
        }
    }

    fn seen(&mut self, platform: &str) {
        if !self.since.contains_key(platform) {
            self.since.insert(platform.to_string(), Instant::now());
        }
    }

    fn take(&mut self, platform: &str) -> Vec<(Key, Running)> {
        let keys: Vec<Key> = self
            .running
            .keys()
            .filter(|k| k.0 == platform)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.running.remove_entry(&k))
            .collect()
    }

    /// Platforms with running steps.
    pub fn active(&self) -> Vec<&str> {
        let mut p: Vec<&str> = self.running.keys().map(|k| k.0.as_str()).collect();
        p.dedup();
        p
    }
}

struct Drawn {
    state: State,
    headers: BTreeMap<String, ProgressBar>,
    steps: BTreeMap<Key, ProgressBar>,
}

/// Draws [`State`] on standard error; finishing (on drop) clears the live area and prints the
/// report.
pub struct LiveView {
    mp: MultiProgress,
    width: usize,
    drawn: Mutex<Drawn>,
}

impl Default for LiveView {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveView {
    pub fn new() -> Self {
        let term = console::Term::stderr();
        // term_like: drawn even when --progress tty is forced on a non-terminal.
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(term.clone()),
            10,
        ));
        let width = term.size_checked().map(|(_, w)| w as usize).unwrap_or(80);
        LiveView {
            mp,
            width: width.max(20),
            drawn: Mutex::new(Drawn {
                state: State::default(),
                headers: BTreeMap::new(),
                steps: BTreeMap::new(),
            }),
        }
    }

    fn fit(&self, s: &str, room: usize) -> String {
        console::truncate_str(s, self.width.saturating_sub(room).max(8), "…").to_string()
    }

    /// A line above the live view (a base image pulled while steps run).
    pub fn println(&self, line: &str) {
        let _ = self.mp.println(self.fit(line, 1));
    }

    pub fn event(&self, e: &Event) {
        let Ok(mut d) = self.drawn.lock() else { return };
        for line in d.state.apply(e) {
            let _ = self.mp.println(self.fit(&line, 1));
        }
        self.sync(&mut d);
    }

    /// Makes the bars match the state: one header per platform with running steps, one bar
    /// per running step (its timer and tail) under it.
    fn sync(&self, d: &mut Drawn) {
        let Drawn {
            state,
            headers,
            steps,
        } = d;
        steps.retain(|k, bar| {
            let keep = state.running.contains_key(k);
            if !keep {
                bar.finish_and_clear();
                self.mp.remove(bar);
            }
            keep
        });
        let active = state.active();
        headers.retain(|p, bar| {
            let keep = active.contains(&p.as_str());
            if !keep {
                bar.finish_and_clear();
                self.mp.remove(bar);
            }
            keep
        });
        for (k, r) in &state.running {
            let p = &k.0;
            if !headers.contains_key(p) {
                let since = state.since.get(p).copied().unwrap_or_else(Instant::now);
                let bar = self.mp.add(ProgressBar::new_spinner());
                bar.set_style(timer_style("[+] {prefix} {secs}{msg}", since));
                bar.set_prefix(p.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                headers.insert(p.clone(), bar);
            }
            let done = state.done.get(p).copied().unwrap_or(0);
            if let Some(h) = headers.get(p) {
                h.set_message(format!(" ({done} done)"));
            }
            if !steps.contains_key(k) {
                // After the platform's last bar, so each platform's steps stay together.
                let after = steps
                    .range((p.clone(), String::new(), 0)..)
                    .take_while(|(k2, _)| &k2.0 == p)
                    .map(|(_, b)| b)
                    .last()
                    .or_else(|| headers.get(p));
                let bar = ProgressBar::new_spinner();
                let bar = match after {
                    Some(a) => self.mp.insert_after(a, bar),
                    None => self.mp.add(bar),
                };
                bar.set_style(timer_style(" => {prefix} {secs}{msg}", r.started));
                bar.set_prefix(self.fit(&r.label, 12));
                bar.enable_steady_tick(Duration::from_millis(100));
                steps.insert(k.clone(), bar);
            }
            if let Some(bar) = steps.get(k) {
                let tail: String = r
                    .tail()
                    .map(|l| format!("\n    {}", self.fit(l, 5)))
                    .collect();
                bar.set_message(tail);
            }
        }
    }
}

/// A template whose `{secs}` is the time since `since`, as `1.2s`.
fn timer_style(template: &str, since: Instant) -> ProgressStyle {
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner());
    style.with_key(
        "secs",
        move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}s", since.elapsed().as_secs_f64());
        },
    )
}

impl Drop for LiveView {
    fn drop(&mut self) {
        let Ok(mut d) = self.drawn.lock() else { return };
        d.state.running.clear();
        self.sync(&mut d);
        let _ = self.mp.clear();
        for r in &d.state.report {
            eprintln!("{r}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn start(p: &str, i: usize, text: &str) -> Event {
        Event::StepStart {
            platform: p.into(),
            stage: "0".into(),
            index: i,
            total: 3,
            text: text.into(),
            time: SystemTime::now(),
        }
    }
    fn out(p: &str, i: usize, line: &str) -> Event {
        Event::Output {
            platform: p.into(),
            stage: "0".into(),
            index: i,
            total: 3,
            stream: runtime::sandbox::Stream::Stdout,
            time: SystemTime::now(),
            line: line.into(),
        }
    }
    fn done(p: &str, i: usize, text: &str, cached: bool, emulated: bool) -> Event {
        Event::Step {
            platform: p.into(),
            stage: "0".into(),
            index: i,
            total: 3,
            text: text.into(),
            emulated,
            cached,
            seconds: 1.25,
        }
    }

    #[test]
    fn modes() {
        assert_eq!(mode("auto", false, true), Mode::Tty);
        assert_eq!(mode("auto", false, false), Mode::Plain);
        assert_eq!(mode("tty", false, false), Mode::Tty);
        assert_eq!(mode("plain", false, true), Mode::Plain);
        assert_eq!(mode("rawjson", false, true), Mode::RawJson);
        assert_eq!(mode("quiet", false, true), Mode::Quiet);
        assert_eq!(mode("tty", true, true), Mode::Quiet);
    }

    #[test]
    fn steps_start_show_their_tail_and_collapse_when_done() {
        let mut s = State::default();
        assert!(
            s.apply(&done("linux/amd64", 1, "FROM bb", true, false))
                .len()
                == 1
        );
        assert!(s.apply(&start("linux/amd64", 2, "RUN x\nmore")).is_empty());
        assert!(s.apply(&start("linux/arm64", 2, "RUN x")).is_empty());
        for n in 0..10 {
            s.apply(&out(
                "linux/amd64",
                2,
                &format!("line {n}\t\x1b[31mred\x1b[0m"),
            ));
        }
        assert_eq!(s.active(), ["linux/amd64", "linux/arm64"]);
        let r = &s.running[&("linux/amd64".into(), "0".into(), 2)];
        assert_eq!(r.label, "[linux/amd64 0 2/3] RUN x");
        let tail: Vec<&String> = r.tail().collect();
        assert_eq!(tail.len(), TAIL);
        assert_eq!(tail[0], "line 4 red");
        assert_eq!(tail[TAIL - 1], "line 9 red");

        let lines = s.apply(&done("linux/amd64", 2, "RUN x\nmore", false, false));
        assert_eq!(lines, ["=> [linux/amd64 0 2/3] RUN x 1.2s"]);
        assert_eq!(s.active(), ["linux/arm64"]);
        let lines = s.apply(&done("linux/arm64", 2, "RUN x", true, true));
        assert_eq!(lines, ["=> CACHED EMULATED [linux/arm64 0 2/3] RUN x 1.2s"]);
        assert!(s.running.is_empty() && s.active().is_empty());
        assert_eq!(s.done["linux/amd64"], 2);
        assert!(s.report.is_empty());
    }

    #[test]
    fn a_failure_keeps_the_output_for_the_report_and_cancels_the_rest() {
        let mut s = State::default();
        s.apply(&start("linux/amd64", 2, "RUN false"));
        s.apply(&start("linux/arm64", 2, "RUN sleep 9"));
        s.apply(&out("linux/amd64", 2, "why it failed"));
        let lines = s.apply(&Event::Failed {
            platform: "linux/amd64".into(),
            error: "RUN false: exit code 1".into(),
        });
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("=> ERROR [linux/amd64 0 2/3] RUN false "));
        let lines = s.apply(&Event::Cancelled {
            platform: "linux/arm64".into(),
        });
        assert!(lines[0].starts_with("=> CANCELED [linux/arm64 0 2/3] RUN sleep 9 "));
        let lines = s.apply(&Event::Cancelled {
            platform: "linux/s390x".into(),
        });
        assert_eq!(lines, ["=> CANCELED [linux/s390x] after the first failure"]);
        assert!(s.running.is_empty());
        assert_eq!(
            s.report,
            ["------\n > [linux/amd64 0 2/3] RUN false:\n   why it failed\n------"]
        );
    }
}
