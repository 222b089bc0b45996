//! Per-blob progress of a copy: on a TTY a live line per blob in flight (indicatif), finished
//! lines with size and rate everywhere; nothing with --quiet.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use oci::Digest;
use store::Event;

use crate::output::human_size;

pub struct BlobProgress {
    quiet: bool,
    /// Word for a finished transfer: "copied", "pulled", "pushed".
    verb: &'static str,
    bars: Option<MultiProgress>,
    active: Mutex<HashMap<Digest, (Instant, Option<ProgressBar>)>>,
}

impl BlobProgress {
    pub fn new(quiet: bool, verb: &'static str) -> Self {
        let tty = std::io::stderr().is_terminal() && !quiet;
        BlobProgress {
            quiet,
            verb,
            bars: tty.then(MultiProgress::new),
            active: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn event(&self, e: Event<'_>) {
        if self.quiet {
            return;
        }
        let short = |d: &Digest| d.to_string()[..19].to_string();
        match e {
            Event::Started(d) => {
                let bar = self.bars.as_ref().map(|mp| {
                    let pb = mp.add(ProgressBar::new_spinner());
                    if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} {elapsed}") {
                        pb.set_style(style);
                    }
                    pb.set_message(format!("{} {}", short(&d.digest), human_size(d.size)));
                    pb.enable_steady_tick(Duration::from_millis(120));
                    pb
                });
                if let Ok(mut a) = self.active.lock() {
                    a.insert(d.digest.clone(), (Instant::now(), bar));
                }
            }
            Event::Copied(d) => {
                let started = self
                    .active
                    .lock()
                    .ok()
                    .and_then(|mut a| a.remove(&d.digest));
                let rate = match &started {
                    Some((t, _)) if t.elapsed().as_secs_f64() > 0.0 => {
                        let secs = t.elapsed().as_secs_f64();
                        format!(
                            " in {secs:.1}s ({}/s)",
                            human_size((d.size as f64 / secs) as u64)
                        )
                    }
                    _ => String::new(),
                };
                if let Some((_, Some(pb))) = started {
                    pb.finish_and_clear();
                }
                self.line(format!(
                    "  {:<7} {} {}{rate}",
                    self.verb,
                    short(&d.digest),
                    human_size(d.size)
                ));
            }
            Event::Skipped(d) => self.line(format!(
                "  present {} {}",
                short(&d.digest),
                human_size(d.size)
            )),
            Event::Mounted(d) => {
                if let Some((_, Some(pb))) = self
                    .active
                    .lock()
                    .ok()
                    .and_then(|mut a| a.remove(&d.digest))
                {
                    pb.finish_and_clear();
                }
                self.line(format!(
                    "  mounted {} {}",
                    short(&d.digest),
                    human_size(d.size)
                ))
            }
        }
    }
}

/// A counter line (`[12/40] tags looked at`) on a TTY; hidden elsewhere and with --quiet.
pub fn counter(quiet: bool, total: u64, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!("  [{{pos}}/{{len}}] {what}")) {
        pb.set_style(style);
    }
    pb
}
