//! Definition keys, as BuildKit's: what a step's key is when every stage it reads is known by
//! how it is defined (its base's manifest, its instructions and args, the content of the context
//! files it reads, the definitions of the stages it reads in turn) rather than by what it built.
//!
//! A step that reads other stages (`COPY --from=STAGE`, `RUN --mount=type=bind,from=STAGE`) is
//! recorded under its content key and under its definition key, and looked up by the latter
//! first: when that hits, the stages it reads need not be built at all. So with
//! `--cache-to mode=min`, which keeps only the final stage's steps, a later build with the same
//! inputs takes the final stage from the cache without running the stage it copies from. The
//! price is BuildKit's: a stage whose RUN output is not reproducible is taken as first built.
//!
//! Everything here is known before any step runs, so which stage instances the targets need is
//! decided up front. An instance nothing needs is still tried with the cache alone: if every
//! step of it is cached it is shown as usual, else it is left out (nothing reads it).

use std::collections::{HashMap, HashSet};

use dockerfile::plan::{Base, Op, Origin, PlannedSource, StageInstance, Step};
use dockerfile::{ast, BuildPlan};

use super::{key_of, Engine};
use crate::cache::CachedStep;

/// What the definition keys of a plan decide.
#[derive(Default)]
pub(super) struct Definitions {
    /// Instance → each step's definition key; absent for an instance that has none (a stage
    /// under `--no-cache-filter`, an `ADD` of a URL without `--checksum`, or one reading those).
    pub steps: HashMap<String, Vec<String>>,
    /// (instance, step index) → the cached step found by definition before the build started.
    pub hits: HashMap<(String, usize), CachedStep>,
    /// Instance → the instances it waits for: its base stage and the stages its steps read,
    /// except stages read only by steps in `hits`.
    pub wait_for: HashMap<String, Vec<String>>,
    /// Instances no target needs: built from the cache alone, or left out.
    pub optional: HashSet<String>,
}

/// The stage instances a step reads.
pub(super) fn reads(step: &Step) -> Vec<&str> {
    match &step.op {
        Op::Copy {
            from: Origin::Stage { key, .. },
            ..
        } => vec![key.as_str()],
        Op::Run { mounts, .. } => mounts
            .iter()
            .filter(|m| m.kind == ast::MountType::Bind)
            .filter_map(|m| match &m.from {
                Some(Origin::Stage { key, .. }) => Some(key.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Engine<'_> {
    /// Definition keys of every step of the plan, the hits they find, and which instances the
    /// targets need.
    pub(super) fn definitions(&self, plan: &BuildPlan) -> Definitions {
        let mut defs = Definitions::default();
        // Instance → the definition its last step leaves (its base's for an empty stage).
        let mut ends: HashMap<&str, Option<String>> = HashMap::new();
        // `stages` lists dependencies before dependents.
        for inst in &plan.stages {
            let steps = self.instance_definition(inst, &ends);
            let end = steps
                .as_ref()
                .map(|(base, v)| v.last().cloned().unwrap_or_else(|| base.clone()));
            ends.insert(&inst.key, end);
            if let Some((_, v)) = steps {
                defs.steps.insert(inst.key.clone(), v);
            }
        }
        for inst in &plan.stages {
            let caching = !self.opts.no_cache
                && !self
                    .opts
                    .no_cache_filter
                    .contains(&super::stage_name(&inst.body));
            let mut hit_reads: HashSet<&str> = HashSet::new();
            let mut missed_reads: HashSet<&str> = HashSet::new();
            for (i, step) in inst.body.steps.iter().enumerate() {
                let read = reads(step);
                if read.is_empty() {
                    continue;
                }
                let hit = match (caching, defs.steps.get(&inst.key)) {
                    (true, Some(v)) => v.get(i).and_then(|k| self.cached(k)),
                    _ => None,
                };
                match hit {
                    Some(h) => {
                        defs.hits.insert((inst.key.clone(), i), h);
                        hit_reads.extend(read);
                    }
                    None => missed_reads.extend(read),
                }
            }
            let base = match &inst.body.base {
                Base::Stage { key, .. } => Some(key.as_str()),
                _ => None,
            };
            let wait: Vec<String> = inst
                .body
                .depends_on
                .iter()
                .filter(|d| {
                    Some(d.as_str()) == base
                        || missed_reads.contains(d.as_str())
                        || !hit_reads.contains(d.as_str())
                })
                .cloned()
                .collect();
            defs.wait_for.insert(inst.key.clone(), wait);
        }
        // What the targets need, through what each instance waits for.
        let mut needed: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = plan.platforms.iter().map(|p| p.target.as_str()).collect();
        while let Some(k) = todo.pop() {
            if needed.insert(k) {
                if let Some(w) = defs.wait_for.get(k) {
                    todo.extend(w.iter().map(String::as_str));
                }
            }
        }
        defs.optional = plan
            .stages
            .iter()
            .filter(|s| !needed.contains(s.key.as_str()))
            .map(|s| s.key.clone())
            .collect();
        defs
    }

    /// (base definition, each step's definition key) of one instance, or None when it has no
    /// definition key. `ends`: the instances before it.
    fn instance_definition(
        &self,
        inst: &StageInstance,
        ends: &HashMap<&str, Option<String>>,
    ) -> Option<(String, Vec<String>)> {
        let body = &inst.body;
        if self.opts.no_cache_filter.contains(&super::stage_name(body)) {
            return None;
        }
        let platform = &body.platform;
        let stage = |key: &str| ends.get(key).cloned().flatten();
        let image = |reference: &str| self.base_image(reference, platform).ok().map(|s| s.key);
        let base = match &body.base {
            Base::Scratch => key_of(&["scratch", &platform.to_string()]),
            Base::Image { reference } => image(reference)?,
            Base::Stage { key, .. } => stage(key)?,
        };
        // Never equal to a content key.
        let base = match &body.base {
            Base::Stage { .. } => base,
            _ => key_of(&["definition", &base]),
        };
        let layer_form = format!("{:?}", self.opts.layer.source_date_epoch);
        let hosts = format!("{:?}", self.opts.extra_hosts);
        let mut prev = base.clone();
        let mut out = Vec::with_capacity(body.steps.len());
        for step in &body.steps {
            let op_json = serde_json::to_string(&step.op).ok()?;
            let sk = key_of(&[&prev, &op_json, &platform.to_string(), &layer_form]);
            let key = match &step.op {
                Op::Run { mounts, .. } => {
                    let mut parts = Vec::new();
                    for m in mounts.iter().filter(|m| m.kind == ast::MountType::Bind) {
                        let rel = m.source.clone().unwrap_or_else(|| ".".into());
                        parts.push(match &m.from {
                            None | Some(Origin::Context) => self
                                .fingerprint_if_arrived(&[PlannedSource::Path { path: rel }], &[])
                                .ok()?,
                            Some(Origin::Stage { key, .. }) => stage(key)?,
                            Some(Origin::Image { reference }) => image(reference)?,
                        });
                    }
                    let parts = key_of(&parts.iter().map(String::as_str).collect::<Vec<_>>());
                    key_of(&[&sk, &parts, &hosts])
                }
                Op::Copy {
                    from,
                    sources,
                    exclude,
                    ..
                } => {
                    let from = match from {
                        Origin::Context => self.fingerprint_if_arrived(sources, exclude).ok()?,
                        Origin::Stage { key, .. } => stage(key)?,
                        Origin::Image { reference } => image(reference)?,
                    };
                    key_of(&[&sk, &from])
                }
                Op::Add {
                    sources,
                    exclude,
                    checksum,
                    ..
                } => {
                    let is_url = |p: &str| p.starts_with("http://") || p.starts_with("https://");
                    let (urls, files): (Vec<&PlannedSource>, Vec<&PlannedSource>) = sources
                        .iter()
                        .partition(|s| matches!(s, PlannedSource::Path { path } if is_url(path)));
                    // A URL's content is known only by fetching it, unless --checksum names it.
                    let sum = match (urls.is_empty(), checksum) {
                        (true, _) => String::new(),
                        (false, Some(c)) => oci::Digest::parse(c).ok()?.to_string(),
                        (false, None) => return None,
                    };
                    let url_key: Vec<String> = urls
                        .iter()
                        .filter_map(|s| match s {
                            PlannedSource::Path { path } => Some(format!("{path}={sum}")),
                            _ => None,
                        })
                        .collect();
                    let files: Vec<PlannedSource> = files.into_iter().cloned().collect();
                    let fp = self.fingerprint_if_arrived(&files, exclude).ok()?;
                    key_of(&[&sk, &fp, &url_key.join(",")])
                }
                _ => sk,
            };
            out.push(key.clone());
            prev = key;
        }
        Some((base, out))
    }
}
