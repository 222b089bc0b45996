//! Executes a [`dockerfile::BuildPlan`]: every stage instance once (instances shared across
//! platforms run once), independent instances in parallel, RUN in the sandbox over snapshots of
//! the parent layers (natively or through QEMU), COPY from the context or other stages, the other
//! instructions folded into the image config; then one image per platform and an index over them,
//! all in the store. A step cache keyed by content skips RUN steps whose inputs are unchanged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use dockerfile::plan::{Base, InstanceBody, Op, Origin, PlannedSource, StageInstance};
use dockerfile::values::{Chown, Owner};
use dockerfile::{ast, BuildPlan};
use oci::media_type as mt;
use oci::{
    ContainerConfig, Descriptor, Digest, Document, History, ImageConfig, ImageManifest, Index,
    Platform,
};
use store::Layout;

use crate::cache::{CacheStore, CachedStep, LocalCache};
use crate::context::{copy_into, Context, ContextGate};
use runtime::emulation;
use runtime::layer::{self, LayerOptions};
use runtime::sandbox::{self, Network, RootFs, RunSpec};
use runtime::snapshot::{self, SnapshotCache};
use runtime::{io_err, Error, Result};

mod defkey;

/// Finds base images (and `COPY --from` images): makes sure the image for `platform` is in the
/// store and returns its manifest and config. The CLI implements it with the store and registries.
pub trait BaseResolver: Sync {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> std::result::Result<(ImageManifest, ImageConfig), String>;

    /// The digest the reference resolved to for `platform`, for the
    /// `org.opencontainers.image.base.digest` annotation.
    fn digest(&self, _reference: &str, _platform: &Platform) -> Option<Digest> {
        None
    }

    /// Puts these layers of resolved images in the store: bases are resolved by manifest and
    /// config, and their layers come only when a step needs their files.
    fn layers(&self, _layers: &[Descriptor]) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Where `--annotation` goes (buildx's prefixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationScope {
    /// `index:`: the index over the platforms.
    Index,
    /// `manifest:` (the default): each platform's manifest.
    Manifest,
    /// `manifest-descriptor:`: each manifest's entry in the index.
    ManifestDescriptor,
}

impl AnnotationScope {
    /// Splits `[SCOPE:]KEY=VALUE`.
    pub fn parse(spec: &str) -> std::result::Result<(Self, String, String), String> {
        let (kv, value) = spec.split_once('=').ok_or_else(|| {
            format!("--annotation {spec:?}: use [index:|manifest:|manifest-descriptor:]KEY=VALUE")
        })?;
        let (scope, key) = match kv.split_once(':') {
            Some(("index", k)) => (AnnotationScope::Index, k),
            Some(("manifest", k)) => (AnnotationScope::Manifest, k),
            Some(("manifest-descriptor", k)) => (AnnotationScope::ManifestDescriptor, k),
            _ => (AnnotationScope::Manifest, kv),
        };
        if key.is_empty() {
            return Err(format!("--annotation {spec:?}: the key is empty"));
        }
        Ok((scope, key.to_string(), value.to_string()))
    }
}

pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

pub struct BuildOptions {
    pub context: PathBuf,
    /// Set when `context` is still being filled: the steps that read it wait for the gate.
    pub context_gate: Option<ContextGate>,
    /// The Dockerfile as errors name it (`path:line:col`).
    pub dockerfile: String,
    /// Where snapshots, the step cache and scratch space live (under the store's root).
    pub work_dir: PathBuf,
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name, or `stage-N`) whose steps run even when cached.
    pub no_cache_filter: Vec<String>,
    /// `--label K=V`: labels set on every image's config, over the Dockerfile's.
    pub labels: BTreeMap<String, String>,
    /// `--add-host NAME:IP`: extra /etc/hosts lines for RUN steps.
    pub extra_hosts: Vec<(String, String)>,
    /// `--annotation`: (where, key, value).
    pub annotations: Vec<(AnnotationScope, String, String)>,
    pub layer: LayerOptions,
    pub jobs: usize,
    /// `--secret id=ID,src=FILE|env=VAR`, by value: mounted for `RUN --mount=type=secret` from a
    /// tmpfs private to the step, never on disk, in a layer or in a cache key.
    pub secrets: BTreeMap<String, sandbox::SecretBytes>,
    /// `--ssh ID=SOCKET`: SSH agent sockets for `RUN --mount=type=ssh`, never in a cache key.
    pub ssh: BTreeMap<String, PathBuf>,
    /// Proxy variables (`HTTP_PROXY`, `https_proxy`, ...) for every RUN, as BuildKit's predefined
    /// args: never in the image's history or config, nor in a cache key.
    pub proxies: BTreeMap<String, String>,
    /// `--network`: RUN steps' default network; `--allow`: granted entitlements (network.host).
    pub network: Network,
    pub allow: Vec<String>,
    /// `--cache-from`: steps found there count as cached; their layers are fetched only when a
    /// later step needs their files.
    pub imported: Option<std::sync::Arc<crate::cache_remote::Imported>>,
    /// Stops the build from outside (another builder node failed); the build's own first
    /// failure sets it too.
    pub cancel: sandbox::Cancel,
}

/// Progress of a build, for displays.
#[derive(Clone, Debug)]
pub enum Event {
    Step {
        platform: String,
        stage: String,
        index: usize,
        total: usize,
        text: String,
        emulated: bool,
        cached: bool,
        seconds: f64,
    },
    /// A step starts work (not a cache hit).
    StepStart {
        platform: String,
        stage: String,
        index: usize,
        total: usize,
        text: String,
        time: SystemTime,
    },
    /// A line a RUN step wrote, as it arrives.
    Output {
        platform: String,
        stage: String,
        index: usize,
        total: usize,
        stream: sandbox::Stream,
        time: SystemTime,
        line: String,
    },
    /// The build's first failure, reported as it happens; the other instances are being stopped.
    Failed { platform: String, error: String },
    /// An instance stopped because another failed.
    Cancelled { platform: String },
}

/// One platform's image, in the store.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub platform: Platform,
    /// The image manifest, with its platform.
    pub manifest: Descriptor,
    pub config: Digest,
    /// DiffIDs of the layers this build made (base image layers are not among them):
    /// exporters recompress only these unless forced.
    pub own_layers: std::collections::BTreeSet<Digest>,
}

/// The result: per-platform images and the index over them, all in the store (unnamed: hold a
/// write guard until they are named).
#[derive(Clone, Debug)]
pub struct Built {
    pub images: Vec<PlatformImage>,
    pub index: Descriptor,
    /// Every step this build ran or took from a cache, by key: what `--cache-to` exports.
    pub steps: Vec<(String, CachedStep)>,
}

/// Which step of which instance runs, for the events it sends while it runs.
struct At {
    /// The instance's key.
    instance: String,
    /// An instance no target needs: it may only take its steps from the cache.
    cache_only: bool,
    /// The platform label (`linux/amd64 for linux/arm64` on a build-platform stage).
    platform: String,
    stage: String,
    index: usize,
    total: usize,
    text: String,
}

/// The filesystem and config a stage has reached.
#[derive(Clone, Debug)]
struct State {
    layers: Vec<(Descriptor, Digest)>,
    config: ImageConfig,
    /// Content key of everything so far: base, every step, every layer (by diffID).
    key: String,
    /// The latest history time this build gave the stage (the image's `created`).
    created: Option<i64>,
    /// DiffIDs of the layers this build's steps made (exported in the asked compression; base
    /// layers keep theirs).
    own: std::collections::BTreeSet<Digest>,
    /// The instance's steps ignore the cache (`--no-cache-filter`).
    no_cache: bool,
    /// The image the stage's FROM chain starts at, and its digest.
    base: Option<(String, Option<Digest>)>,
}

struct Engine<'a> {
    store: &'a Layout,
    resolver: &'a dyn BaseResolver,
    opts: &'a BuildOptions,
    snapshots: SnapshotCache,
    cache: LocalCache,
    /// Opened when a step first reads it (it may still be arriving: `opts.context_gate`).
    context: std::sync::OnceLock<std::result::Result<Context, String>>,
    progress: &'a (dyn Fn(Event) + Sync),
    /// Instance key → the target platforms that need it, for progress labels.
    targets: HashMap<String, Vec<String>>,
    epoch: Option<i64>,
    started: i64,
    /// Set at the first failure: kills running steps, starts no more.
    cancel: sandbox::Cancel,
    first_failure: Mutex<Option<Error>>,
    /// Steps used, for `Built::steps`.
    used: std::sync::Mutex<Vec<(String, CachedStep)>>,
    /// Definition keys, their hits, and which instances the targets need.
    defs: defkey::Definitions,
    /// Context fingerprints made this build, by what they cover.
    fingerprints: Mutex<HashMap<String, String>>,
    /// Platform-independent layers made in this build.
    shared: SharedLayers<(Descriptor, Digest)>,
}

/// The keys a step is cached under.
struct Keys {
    /// By content: every input as it is.
    content: String,
    /// By definition, for a step that reads other stages.
    def: Option<String>,
    /// What the stage's key becomes after the step (with its layer's diffID).
    chain: String,
}

impl Keys {
    fn plain(key: String) -> Keys {
        Keys {
            content: key.clone(),
            def: None,
            chain: key,
        }
    }

    /// A step found by its definition key (its content key is unknown: the stages it reads were
    /// not built); `chain`: the step's key before what it reads.
    fn by_definition(def: &str, chain: &str) -> Keys {
        Keys {
            content: def.to_string(),
            def: None,
            chain: chain.to_string(),
        }
    }
}

type Cell<T> = std::sync::Arc<std::sync::OnceLock<std::result::Result<T, String>>>;

/// Results made once per build by content key: the layer of a COPY or ADD from the context is
/// the same files for every platform, so it is unpacked, diffed and compressed once, and other
/// platforms' instances asking meanwhile wait for it.
pub struct SharedLayers<T> {
    cells: Mutex<HashMap<String, Cell<T>>>,
}

impl<T> Default for SharedLayers<T> {
    fn default() -> Self {
        SharedLayers {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

/// A stage's name, or `stage-N`.
fn stage_name(body: &InstanceBody) -> String {
    body.stage
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{}", body.stage.index))
}

impl<T: Clone> SharedLayers<T> {
    /// `make`'s result for `key`, calling it only if no caller did before. A failure is the
    /// maker's own error for the maker, and says so for the others.
    pub fn get_or_make(&self, key: &str, make: impl FnOnce() -> Result<T>) -> Result<T> {
        let cell = self
            .cells
            .lock()
            .map_err(|_| poisoned())?
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut own_error = None;
        let made = cell.get_or_init(|| {
            make().map_err(|e| {
                let text = e.to_string();
                own_error = Some(e);
                text
            })
        });
        if let Some(e) = own_error {
            return Err(e);
        }
        made.clone().map_err(|e| Error::BadLayer {
            layer: key.to_string(),
            reason: format!("making it for another platform failed: {e}"),
        })
    }
}

pub fn build(
    store: &Layout,
    plan: &BuildPlan,
    resolver: &dyn BaseResolver,
    opts: &BuildOptions,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Built> {
    // Every platform must be runnable before any step runs.
    let mut needs_run: Vec<Platform> = Vec::new();
    for s in &plan.stages {
        if s.body
            .steps
            .iter()
            .any(|st| matches!(st.op, Op::Run { .. }))
            && !needs_run.iter().any(|p| p.same_target(&s.body.platform))
        {
            needs_run.push(s.body.platform.clone());
        }
    }
    emulation::check_all(&needs_run)?;
    let cache = LocalCache::at(&opts.work_dir);
    cache.create()?;
    let mut targets: HashMap<String, Vec<String>> = HashMap::new();
    for pp in &plan.platforms {
        for k in &pp.stages {
            targets
                .entry(k.clone())
                .or_default()
                .push(pp.platform.to_string());
        }
    }
    let mut engine = Engine {
        targets,
        store,
        resolver,
        opts,
        snapshots: SnapshotCache::open(cache.snapshots_dir())?,
        cache,
        context: {
            // Without a gate it is here now: a missing context fails before any step.
            let c = std::sync::OnceLock::new();
            if opts.context_gate.is_none() {
                let _ = c.set(Ok(Context::open(&opts.context)?));
            }
            c
        },
        progress,
        epoch: opts.layer.source_date_epoch,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        cancel: opts.cancel.clone(),
        first_failure: Mutex::new(None),
        used: Default::default(),
        defs: Default::default(),
        fingerprints: Default::default(),
        shared: Default::default(),
    };
    engine.defs = engine.definitions(plan);
    let results = engine.run_all(&plan.stages)?;
    let mut images = Vec::new();
    for pp in &plan.platforms {
        let state = results.get(&pp.target).ok_or_else(|| Error::BadLayer {
            layer: pp.target.clone(),
            reason: "the plan's target instance was not built".into(),
        })?;
        images.push(engine.write_image(&pp.platform, state)?);
    }
    let mut index = Index::new(
        mt::OCI_INDEX,
        images.iter().map(|i| i.manifest.clone()).collect(),
    );
    for (scope, k, v) in &opts.annotations {
        match scope {
            AnnotationScope::Index => {
                index.annotations.insert(k.clone(), v.clone());
            }
            AnnotationScope::ManifestDescriptor => {
                for d in &mut index.manifests {
                    d.annotations.insert(k.clone(), v.clone());
                }
            }
            AnnotationScope::Manifest => {}
        }
    }
    let index = Document::new(index);
    store.put_bytes(index.bytes())?;
    Ok(Built {
        images,
        index: index.descriptor(mt::OCI_INDEX),
        steps: engine.used.into_inner().unwrap_or_default(),
    })
}

impl Engine<'_> {
    /// Runs instances as soon as what they depend on is done, up to `jobs` at a time: each
    /// finished instance may start others at once (no waves). After a failure nothing new starts
    /// and the first error is returned once running instances end.
    fn run_all(&self, stages: &[StageInstance]) -> Result<HashMap<String, State>> {
        let jobs = self.opts.jobs.max(1);
        let mut done: HashMap<String, State> = HashMap::new();
        // Instances no target needs that could not come from the cache alone.
        let mut left_out: std::collections::HashSet<String> = Default::default();
        let mut pending: Vec<&StageInstance> = stages.iter().collect();
        let waits = |s: &StageInstance| -> Vec<String> {
            match self.defs.wait_for.get(&s.key) {
                Some(w) => w.clone(),
                None => s.body.depends_on.clone(),
            }
        };
        std::thread::scope(|sc| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::channel::<(String, Result<Option<State>>)>();
            let mut running = 0usize;
            let mut first_err: Option<Error> = None;
            loop {
                while first_err.is_none() && running < jobs {
                    let finished = |k: &String| done.contains_key(k) || left_out.contains(k);
                    let Some(pos) = pending.iter().position(|s| waits(s).iter().all(finished))
                    else {
                        break;
                    };
                    let inst = pending.remove(pos);
                    let optional = self.defs.optional.contains(&inst.key);
                    // Only optional instances wait for ones that may be left out.
                    if waits(inst).iter().any(|k| left_out.contains(k)) {
                        left_out.insert(inst.key.clone());
                        continue;
                    }
                    let deps = done.clone();
                    let tx = tx.clone();
                    running += 1;
                    sc.spawn(move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.run_instance(&inst.key, &inst.body, &deps, optional)
                        }))
                        .unwrap_or_else(|_| Err(poisoned()));
                        let r = match (r, optional) {
                            // Nothing reads it: a step the cache lacks leaves it out.
                            (Err(_), true) => Ok(None),
                            (r, _) => r
                                .map(Some)
                                .map_err(|e| self.stop(e, &inst.key, &inst.body.platform)),
                        };
                        let _ = tx.send((inst.key.clone(), r));
                    });
                }
                if running == 0 {
                    break;
                }
                let (key, r) = rx.recv().map_err(|_| poisoned())?;
                running -= 1;
                match r {
                    Ok(Some(st)) => {
                        done.insert(key, st);
                    }
                    Ok(None) => {
                        left_out.insert(key);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(self.first_failure(e));
            }
            if !pending.is_empty() {
                return Err(Error::BadLayer {
                    layer: "plan".into(),
                    reason: "stage instances depend on each other in a cycle".into(),
                });
            }
            Ok(())
        })?;
        Ok(done)
    }

    /// Builds one instance. A `cache_only` one (no target needs it) fails at its first step the
    /// cache lacks, and its steps are shown only when all of them were cached.
    fn run_instance(
        &self,
        key: &str,
        body: &InstanceBody,
        deps: &HashMap<String, State>,
        cache_only: bool,
    ) -> Result<State> {
        let platform = &body.platform;
        let stage_name = stage_name(body);
        let mut shown: Vec<Event> = Vec::new();
        let mut state = match &body.base {
            Base::Scratch => State {
                layers: Vec::new(),
                config: ImageConfig {
                    architecture: platform.architecture.clone(),
                    os: platform.os.clone(),
                    variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
                    config: Some(ContainerConfig {
                        env: Some(vec![format!("PATH={}", sandbox::DEFAULT_PATH)]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                key: key_of(&["scratch", &platform.to_string()]),
                created: None,
                own: Default::default(),
                no_cache: false,
                base: None,
            },
            Base::Image { reference } => self.base_image(reference, platform)?,
            Base::Stage { key, .. } => deps.get(key).cloned().ok_or_else(|| Error::BadLayer {
                layer: key.clone(),
                reason: "a stage this one builds on was not built".into(),
            })?,
        };
        state.no_cache = self.opts.no_cache_filter.contains(&stage_name);
        let total = body.steps.len();
        for (i, step) in body.steps.iter().enumerate() {
            if self.cancel.is_cancelled() {
                return Err(stopped());
            }
            let started = Instant::now();
            let at = At {
                instance: key.to_string(),
                cache_only,
                platform: self.label(key, platform),
                stage: stage_name.clone(),
                index: i + 1,
                total,
                text: step.instruction.clone(),
            };
            let (cached, emulated) =
                self.apply(&mut state, step, platform, deps, &at)
                    .map_err(|e| Error::Step {
                        location: format!(
                            "{}:{}:{}",
                            self.opts.dockerfile, step.pos.line, step.pos.column
                        ),
                        instruction: step.instruction.clone(),
                        platform: platform.to_string(),
                        reason: e.to_string(),
                    })?;
            let event = Event::Step {
                platform: self.label(key, platform),
                stage: stage_name.clone(),
                index: i + 1,
                total,
                text: step.instruction.clone(),
                emulated,
                cached,
                seconds: started.elapsed().as_secs_f64(),
            };
            match cache_only {
                true => shown.push(event),
                false => (self.progress)(event),
            }
        }
        for e in shown {
            (self.progress)(e);
        }
        Ok(state)
    }

    /// A step the cache lacks is about to run: not in an instance no target needs.
    fn must_run(&self, at: &At) -> Result<()> {
        match at.cache_only {
            true => Err(Error::Unsupported(format!(
                "step {} of an instance no target needs is not cached",
                at.index
            ))),
            false => Ok(()),
        }
    }

    /// The definition key of the step at `at`, when it reads other stages, and the hit it found
    /// before the build started.
    fn definition(&self, at: &At) -> (Option<String>, Option<CachedStep>) {
        let i = at.index - 1;
        let key = self
            .defs
            .steps
            .get(&at.instance)
            .and_then(|v| v.get(i))
            .cloned();
        let hit = self.defs.hits.get(&(at.instance.clone(), i)).cloned();
        (key, hit)
    }

    /// The build context, opened once it has arrived (see [`ContextGate`]).
    fn context(&self) -> Result<&Context> {
        if let Some(g) = &self.opts.context_gate {
            g.wait(|| self.cancel.is_cancelled())?;
        }
        self.context
            .get_or_init(|| Context::open(&self.opts.context).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Unsupported(e.clone()))
    }

    /// A context fingerprint for a definition key, which only saves work: a context still
    /// arriving has none, and the stages reading it are looked up step by step instead.
    fn fingerprint_if_arrived(
        &self,
        sources: &[PlannedSource],
        exclude: &[String],
    ) -> Result<String> {
        if self
            .opts
            .context_gate
            .as_ref()
            .is_some_and(|g| !g.is_open())
        {
            return Err(Error::Unsupported(
                "the build context is still arriving".into(),
            ));
        }
        self.fingerprint(sources, exclude)
    }

    /// A context fingerprint, made once per build for the same sources.
    fn fingerprint(&self, sources: &[PlannedSource], exclude: &[String]) -> Result<String> {
        let what = serde_json::to_string(&(sources, exclude)).unwrap_or_default();
        if let Some(f) = self
            .fingerprints
            .lock()
            .ok()
            .and_then(|m| m.get(&what).cloned())
        {
            return Ok(f);
        }
        let f = self.context()?.fingerprint(sources, exclude)?;
        if let Ok(mut m) = self.fingerprints.lock() {
            m.insert(what, f.clone());
        }
        Ok(f)
    }

    fn step_start(&self, at: &At) {
        (self.progress)(Event::StepStart {
            platform: at.platform.clone(),
            stage: at.stage.clone(),
            index: at.index,
            total: at.total,
            text: at.text.clone(),
            time: SystemTime::now(),
        });
    }

    /// Runs a RUN step in the sandbox, sending its output line by line as it arrives: stdout
    /// and stderr on one pipe, so the lines keep the order the step wrote them in.
    fn run_streaming(&self, mut spec: RunSpec, at: &At) -> Result<sandbox::RunOutput> {
        let (tx, rx) = std::sync::mpsc::channel::<(sandbox::Stream, Vec<u8>, SystemTime)>();
        spec.merge_output = true;
        spec.on_output = Some(sandbox::OutputSink(std::sync::Arc::new(
            move |stream, bytes: &[u8]| {
                let _ = tx.send((stream, bytes.to_vec(), SystemTime::now()));
            },
        )));
        std::thread::scope(|sc| {
            // The sink (and with it the sender) goes when the run ends, which ends the loop.
            let run = sc.spawn(move || sandbox::run(&spec));
            let mut partial: Vec<(sandbox::Stream, Vec<u8>)> = Vec::new();
            for (stream, bytes, time) in rx {
                let i = match partial.iter().position(|(s, _)| *s == stream) {
                    Some(i) => i,
                    None => {
                        partial.push((stream, Vec::new()));
                        partial.len() - 1
                    }
                };
                let buf = &mut partial[i].1;
                buf.extend_from_slice(&bytes);
                while let Some(n) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=n).collect();
                    self.output_line(at, stream, time, &line);
                }
                // A progress bar redrawn with \r never ends its line: show it in pieces.
                if buf.len() > 64 << 10 {
                    let line = std::mem::take(buf);
                    self.output_line(at, stream, time, &line);
                }
            }
            for (stream, rest) in partial {
                if !rest.is_empty() {
                    self.output_line(at, stream, SystemTime::now(), &rest);
                }
            }
            run.join().unwrap_or_else(|_| Err(poisoned()))
        })
    }

    fn output_line(&self, at: &At, stream: sandbox::Stream, time: SystemTime, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        (self.progress)(Event::Output {
            platform: at.platform.clone(),
            stage: at.stage.clone(),
            index: at.index,
            total: at.total,
            stream,
            time,
            line: line.trim_end_matches(['\n', '\r']).to_string(),
        });
    }

    /// The first failure cancels the build: reported at once, before what it stops; the
    /// instances it stops report that they were cancelled.
    fn stop(&self, e: Error, key: &str, platform: &Platform) -> Error {
        let Ok(mut first) = self.first_failure.lock() else {
            return e;
        };
        let platform = self.label(key, platform);
        if self.cancel.is_cancelled() {
            (self.progress)(Event::Cancelled { platform });
            return e;
        }
        self.cancel.cancel();
        (self.progress)(Event::Failed {
            platform,
            error: e.to_string(),
        });
        *first = Some(e);
        stopped()
    }

    /// The error the build ends with: its first failure.
    fn first_failure(&self, e: Error) -> Error {
        self.first_failure
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(e)
    }

    /// `linux/arm64`, or `linux/amd64 for linux/arm64` when a stage runs on the build
    /// platform for another target (`for linux/amd64, linux/arm64` when one instance serves
    /// several).
    fn label(&self, key: &str, platform: &Platform) -> String {
        let own = platform.to_string();
        match self.targets.get(key).map(Vec::as_slice) {
            Some([one]) if *one != own => format!("{own} for {one}"),
            Some(many) if many.len() > 1 => format!("{own} for {}", many.join(", ")),
            _ => own,
        }
    }

    fn base_image(&self, reference: &str, platform: &Platform) -> Result<State> {
        let (manifest, config) = self
            .resolver
            .resolve(reference, platform)
            .map_err(|reason| Error::Base {
                reference: reference.to_string(),
                platform: platform.to_string(),
                reason,
            })?;
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(Error::Base {
                reference: reference.to_string(),
                platform: platform.to_string(),
                reason: format!(
                    "its manifest has {} layers but its config {} diff_ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let layers: Vec<(Descriptor, Digest)> = manifest
            .layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        let mut parts = vec!["image".to_string(), platform.to_string()];
        parts.extend(layers.iter().map(|(d, _)| d.digest.to_string()));
        let mut config = config;
        config.config.get_or_insert_with(Default::default);
        Ok(State {
            created: None,
            key: key_of(&parts.iter().map(String::as_str).collect::<Vec<_>>()),
            layers,
            config,
            own: Default::default(),
            no_cache: false,
            base: Some((
                reference.to_string(),
                self.resolver.digest(reference, platform),
            )),
        })
    }

    fn history(&self, state: &mut State, created_by: String, empty: bool) {
        self.history_at(state, created_by, empty, self.started)
    }

    /// A history entry for a step that first ran at `when` (SOURCE_DATE_EPOCH wins).
    fn history_at(&self, state: &mut State, created_by: String, empty: bool, when: i64) {
        let when = self.epoch.unwrap_or(when);
        state.created = Some(state.created.map_or(when, |c| c.max(when)));
        state.config.history.push(History {
            created: Some(rfc3339(when)),
            created_by: Some(created_by),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: empty.then_some(true),
            ..Default::default()
        });
    }

    /// Applies one step; returns (cached, emulated).
    fn apply(
        &self,
        state: &mut State,
        step: &dockerfile::plan::Step,
        platform: &Platform,
        deps: &HashMap<String, State>,
        at: &At,
    ) -> Result<(bool, bool)> {
        let op_json = serde_json::to_string(&step.op).unwrap_or_default();
        // Clamped times change a layer's tar, so they are in every step's key; compression
        // is not (layers are kept by diffID and compressed as each output asks).
        let layer_form = format!("{:?}", self.opts.layer.source_date_epoch);
        let step_key = key_of(&[&state.key, &op_json, &platform.to_string(), &layer_form]);
        // The config as it is before this step (env, workdir, user); only the config-only
        // instructions below change it.
        let cc = state.config.config.clone().unwrap_or_default();
        match &step.op {
            Op::Run {
                command,
                heredocs,
                mounts,
                network,
                env,
                args,
                workdir,
                user,
                shell,
                ..
            } => {
                let mode = emulation::check(platform)?;
                let emulated = mode.is_emulated();
                // Checked before the cache: a cached host-network step still needs the grant.
                let net = runtime::network::for_step(
                    network.as_deref(),
                    self.opts.network,
                    &self.opts.allow,
                )?;
                // What bind mounts read is an input of the step like its command.
                // So are the --add-host entries it sees.
                let hosts = format!("{:?}", self.opts.extra_hosts);
                let history = format!("RUN {}", command_text(command));
                let (def, def_hit) = self.definition(at);
                if let (Some(def), Some(hit)) = (&def, def_hit) {
                    self.use_hit(state, &Keys::by_definition(def, &step_key), hit, history);
                    return Ok((true, emulated));
                }
                let content = key_of(&[
                    &step_key,
                    &self.mount_inputs(mounts, platform, deps)?,
                    &hosts,
                ]);
                let keys = match defkey::reads(step).is_empty() {
                    true => Keys::plain(content),
                    false => Keys {
                        content,
                        def,
                        chain: step_key.clone(),
                    },
                };
                if self.take_cached(state, &keys, history.clone()) {
                    return Ok((true, emulated));
                }
                self.must_run(at)?;
                // Layers not here yet are fetched before the step is announced.
                let mut lowers = self.snapshot_paths(state)?;
                self.step_start(at);
                let mut full_env: BTreeMap<String, String> = self.opts.proxies.clone();
                for e in cc.env.iter().flatten() {
                    if let Some((k, v)) = e.split_once('=') {
                        full_env.insert(k.to_string(), v.to_string());
                    }
                }
                full_env.extend(env.clone());
                full_env.extend(args.clone());
                let argv = run_argv(command, heredocs, shell);
                let workdir = workdir
                    .clone()
                    .or_else(|| cc.working_dir.clone().filter(|w| !w.is_empty()))
                    .unwrap_or_else(|| "/".into());
                let user = user
                    .clone()
                    .or_else(|| cc.user.clone().filter(|u| !u.is_empty()));
                let tmp = self.scratch("run")?;
                let upper = tmp.path().join("upper");
                let work = tmp.path().join("work");
                let empty = tmp.path().join("empty");
                for d in [&upper, &work, &empty] {
                    fs::create_dir_all(d).map_err(io_err("creating", d))?;
                }
                if lowers.is_empty() {
                    lowers.push(empty.clone());
                }
                let rootfs = if sandbox::overlay_available() {
                    RootFs::Overlay {
                        lowers,
                        upper: upper.clone(),
                        work,
                    }
                } else {
                    return Err(Error::Unsupported(
                        "RUN needs overlayfs (the kernel module `overlay`)".into(),
                    ));
                };
                // Held until the step ends: cache locks, flattened bind sources.
                let mut holds: (Vec<fs::File>, Vec<tempfile::TempDir>) = (Vec::new(), Vec::new());
                let step_mounts = self.mounts(mounts, &workdir, platform, deps, &mut holds)?;
                let mut spec = RunSpec::new(rootfs, &[]);
                spec.mounts = step_mounts;
                spec.argv = argv.clone();
                spec.env = full_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                // As BuildKit: the first SSH mount is the step's agent.
                if let Some(m) = spec
                    .mounts
                    .iter()
                    .find(|m| matches!(m.source, sandbox::MountSource::Host(_)))
                {
                    if !full_env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
                        spec.env.push(format!("SSH_AUTH_SOCK={}", m.target));
                    }
                }
                spec.user = user;
                spec.workdir = workdir;
                spec.cancel = Some(self.cancel.clone());
                spec.extra_hosts = self.opts.extra_hosts.clone();
                spec.network = net;
                let out = self.run_streaming(spec, at)?;
                out.check(&argv)?;
                let added = self.commit_layer(state, &upper, &keys, false)?;
                self.history(state, history, !added);
                Ok((false, emulated))
            }
            Op::Copy {
                from,
                sources,
                dest,
                workdir,
                chown,
                chmod,
                exclude,
                ..
            } => {
                let history = format!("COPY {} {dest}", sources_text(sources));
                let (def, def_hit) = self.definition(at);
                if let (Some(def), Some(hit)) = (&def, def_hit) {
                    self.use_hit(state, &Keys::by_definition(def, &step_key), hit, history);
                    return Ok((true, false));
                }
                let fingerprint = match from {
                    Origin::Context => self.fingerprint(sources, exclude)?,
                    _ => String::new(),
                };
                let keys = match from {
                    Origin::Context => Keys::plain(key_of(&[&step_key, &fingerprint])),
                    Origin::Stage { key, .. } => {
                        let from_key = deps.get(key).map(|s| s.key.clone()).ok_or_else(|| {
                            Error::BadLayer {
                                layer: key.clone(),
                                reason: "COPY --from names a stage that was not built".into(),
                            }
                        })?;
                        Keys {
                            content: key_of(&[&step_key, &from_key]),
                            def,
                            chain: step_key.clone(),
                        }
                    }
                    Origin::Image { reference } => Keys::plain(key_of(&[
                        &step_key,
                        &self.base_image(reference, platform)?.key,
                    ])),
                };
                if self.take_cached(state, &keys, history.clone()) {
                    return Ok((true, false));
                }
                self.must_run(at)?;
                self.step_start(at);
                let workdir = workdir
                    .clone()
                    .or_else(|| cc.working_dir.clone())
                    .unwrap_or_else(|| "/".into());
                let owner = self.chown(state, chown.as_ref())?;
                let mode = chmod.as_ref();
                // What another stage's (or image's) filesystem holds at `sources`.
                let from_state = |src: &State| -> Result<(Descriptor, Digest)> {
                    let tmp = self.scratch("copy")?;
                    let upper = tmp.path().join("upper");
                    fs::create_dir_all(&upper).map_err(io_err("creating", &upper))?;
                    let root = tmp.path().join("from");
                    self.read_paths(src, sources, &root)?;
                    let ctx = Context::of_rootfs(&root)?;
                    copy_into(&ctx, sources, dest, &workdir, &upper, owner, mode, exclude)?;
                    self.write_layer(&upper)
                };
                let layer = match from {
                    // The same files for every platform: one layer, made once.
                    Origin::Context => {
                        let content = key_of(&[
                            "copy",
                            &op_json,
                            &workdir,
                            &format!("{owner:?}"),
                            &fingerprint,
                            &layer_form,
                        ]);
                        self.shared_layer(&content, || {
                            let tmp = self.scratch("copy")?;
                            let upper = tmp.path().join("upper");
                            fs::create_dir_all(&upper).map_err(io_err("creating", &upper))?;
                            copy_into(
                                self.context()?,
                                sources,
                                dest,
                                &workdir,
                                &upper,
                                owner,
                                mode,
                                exclude,
                            )?;
                            self.write_layer(&upper)
                        })?
                    }
                    Origin::Stage { key, .. } => {
                        let src = deps.get(key).ok_or_else(|| Error::BadLayer {
                            layer: key.clone(),
                            reason: "COPY --from names a stage that was not built".into(),
                        })?;
                        from_state(src)?
                    }
                    Origin::Image { reference } => {
                        from_state(&self.base_image(reference, platform)?)?
                    }
                };
                self.take_layer(state, layer, &keys);
                self.history(state, history, false);
                Ok((false, false))
            }
            Op::Add {
                sources,
                dest,
                workdir,
                chown,
                chmod,
                exclude,
                checksum,
                ..
            } => {
                let history = format!("ADD {} {dest}", sources_text(sources));
                let is_url = |p: &str| p.starts_with("http://") || p.starts_with("https://");
                let urls: Vec<String> = sources
                    .iter()
                    .filter_map(|s| match s {
                        PlannedSource::Path { path } if is_url(path) => Some(path.clone()),
                        _ => None,
                    })
                    .collect();
                let sources: Vec<PlannedSource> = sources
                    .iter()
                    .filter(|s| !matches!(s, PlannedSource::Path { path } if is_url(path)))
                    .cloned()
                    .collect();
                let sources = &sources;
                // URLs are fetched every time; their content, not their name, keys the cache.
                let fetch_dir = self.scratch("fetch")?;
                let mut fetched = Vec::new();
                for (i, url) in urls.iter().enumerate() {
                    let path = fetch_dir.path().join(i.to_string());
                    let (digest, mtime) = fetch_url(url, &path, checksum.as_deref())?;
                    fetched.push((url.clone(), path, digest, mtime));
                }
                let url_key: Vec<String> = fetched
                    .iter()
                    .map(|(u, _, d, _)| format!("{u}={d}"))
                    .collect();
                let fingerprint = self.fingerprint(sources, exclude)?;
                let keys = Keys::plain(key_of(&[&step_key, &fingerprint, &url_key.join(",")]));
                if self.take_cached(state, &keys, history.clone()) {
                    return Ok((true, false));
                }
                self.must_run(at)?;
                self.step_start(at);
                let workdir = workdir
                    .clone()
                    .or_else(|| cc.working_dir.clone())
                    .unwrap_or_else(|| "/".into());
                let owner = self.chown(state, chown.as_ref())?;
                let mode = chmod.as_ref();
                // The same files for every platform (context files and downloads): one layer,
                // made once, not unpacked, diffed and compressed again per platform.
                let content = key_of(&[
                    "add",
                    &op_json,
                    &workdir,
                    &format!("{owner:?}"),
                    &fingerprint,
                    &url_key.join(","),
                    &layer_form,
                ]);
                let layer = self.shared_layer(&content, || {
                    let tmp = self.scratch("add")?;
                    let upper = tmp.path().join("upper");
                    fs::create_dir_all(&upper).map_err(io_err("creating", &upper))?;
                    // Local tar archives (plain, gzip, zstd) are unpacked into the destination
                    // directory; everything else is copied as COPY does.
                    let mut plain = Vec::new();
                    let mut archives = Vec::new();
                    for src in sources {
                        match src {
                            PlannedSource::Path { path } => {
                                let found = self.context()?.matches(path)?;
                                if found.iter().all(|(_, real)| is_tar_archive(real))
                                    && !found.is_empty()
                                {
                                    archives.extend(found);
                                } else {
                                    plain.push(src.clone());
                                }
                            }
                            other => plain.push(other.clone()),
                        }
                    }
                    if !plain.is_empty() {
                        copy_into(
                            self.context()?,
                            &plain,
                            dest,
                            &workdir,
                            &upper,
                            owner,
                            mode,
                            exclude,
                        )?;
                    }
                    for (url, path, _, mtime) in &fetched {
                        // docker: a trailing slash (or several sources) names the file after the URL.
                        let into_dir = dest.ends_with('/') || urls.len() + sources.len() > 1;
                        let base_abs = if dest.starts_with('/') {
                            dest.clone()
                        } else {
                            format!("{}/{dest}", workdir.trim_end_matches('/'))
                        };
                        let file = if into_dir {
                            let name = url
                                .split(['?', '#'])
                                .next()
                                .and_then(|u| u.rsplit('/').next())
                                .filter(|n| !n.is_empty())
                                .unwrap_or("index.html");
                            format!("{}/{name}", base_abs.trim_end_matches('/'))
                        } else {
                            base_abs
                        };
                        let to = upper.join(file.trim_start_matches('/'));
                        if let Some(parent) = to.parent() {
                            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
                        }
                        fs::rename(path, &to).map_err(io_err("placing the download at", &to))?;
                        use std::os::unix::fs::PermissionsExt;
                        fs::set_permissions(
                            &to,
                            fs::Permissions::from_mode(
                                mode.map_or(0o600, |c| c.apply(0o600, false)),
                            ),
                        )
                        .map_err(io_err("chmod", &to))?;
                        let (uid, gid) = owner.unwrap_or((0, 0));
                        std::os::unix::fs::chown(&to, Some(uid), Some(gid))
                            .map_err(io_err("chown", &to))?;
                        if let Some(t) = mtime {
                            if let Ok(f) = fs::File::open(&to) {
                                let _ = f.set_times(fs::FileTimes::new().set_modified(*t));
                            }
                        }
                    }
                    let abs = if dest.starts_with('/') {
                        dest.clone()
                    } else {
                        format!("{}/{dest}", workdir.trim_end_matches('/'))
                    };
                    for (rel, real) in archives {
                        let into = upper.join(abs.trim_start_matches('/'));
                        fs::create_dir_all(&into).map_err(io_err("creating", &into))?;
                        let f = fs::File::open(&real).map_err(io_err("opening", &real))?;
                        snapshot::apply_layer(&into, f, None, snapshot::WhiteoutMode::Apply, &rel)?;
                    }
                    self.write_layer(&upper)
                })?;
                self.take_layer(state, layer, &keys);
                self.history(state, history, false);
                Ok((false, false))
            }
            other => {
                let config = state.config.config.get_or_insert_with(Default::default);
                let text = fold_config(config, &mut state.config.author, other);
                let when = self.config_step_time(&step_key);
                state.key = step_key;
                self.history_at(state, text, true, when);
                Ok((false, false))
            }
        }
    }

    /// RUN --mount: cache directories kept across builds (locked unless `sharing=shared`),
    /// tmpfs, read-only binds of the context or of another stage, secrets given with --secret.
    fn mounts(
        &self,
        mounts: &[dockerfile::plan::PlannedMount],
        workdir: &str,
        platform: &Platform,
        deps: &HashMap<String, State>,
        holds: &mut (Vec<fs::File>, Vec<tempfile::TempDir>),
    ) -> Result<Vec<sandbox::StepMount>> {
        let mut out = Vec::new();
        for m in mounts {
            let target = if m.target.starts_with('/') {
                m.target.clone()
            } else {
                format!("{}/{}", workdir.trim_end_matches('/'), m.target)
            };
            match m.kind {
                ast::MountType::Cache => {
                    let id = m.id.clone().unwrap_or_else(|| target.clone());
                    let hex = key_of(&[&id]);
                    let dir = self
                        .cache
                        .cache_mounts_dir()
                        .join(hex.trim_start_matches("sha256:"));
                    if !dir.is_dir() {
                        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
                        let mode = m.mode.unwrap_or(0o755);
                        use std::os::unix::fs::PermissionsExt;
                        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                            .map_err(io_err("chmod", &dir))?;
                        std::os::unix::fs::chown(&dir, m.uid, m.gid)
                            .map_err(io_err("chown", &dir))?;
                    }
                    if m.sharing.as_deref() != Some("shared") {
                        let lock_path = dir.with_extension("lock");
                        let f = fs::OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(&lock_path)
                            .map_err(io_err("opening", &lock_path))?;
                        f.lock().map_err(io_err("locking", &lock_path))?;
                        holds.0.push(f);
                    }
                    out.push(sandbox::StepMount {
                        source: sandbox::MountSource::Cache(dir),
                        target,
                        readonly: false,
                    });
                }
                ast::MountType::Tmpfs => out.push(sandbox::StepMount {
                    source: sandbox::MountSource::Tmpfs,
                    target,
                    readonly: false,
                }),
                ast::MountType::Bind => {
                    let rel = m.source.clone().unwrap_or_default();
                    // Every source is resolved inside its own root by the sandbox.
                    let source = match &m.from {
                        None | Some(Origin::Context) => {
                            let found =
                                self.context()?
                                    .matches(if rel.is_empty() { "." } else { &rel })?;
                            let (path, _) = found.into_iter().next().ok_or_else(|| {
                                Error::Unsupported(format!(
                                    "bind source {rel:?} is not in the build context"
                                ))
                            })?;
                            sandbox::MountSource::Bind {
                                root: self.context()?.root().to_path_buf(),
                                path,
                            }
                        }
                        Some(Origin::Stage { key, .. }) => {
                            let st = deps.get(key).ok_or_else(|| Error::BadLayer {
                                layer: key.clone(),
                                reason: "a stage this mount reads was not built".into(),
                            })?;
                            self.flattened(st, &rel, holds)?
                        }
                        Some(Origin::Image { reference }) => {
                            let st = self.base_image(reference, platform)?;
                            self.flattened(&st, &rel, holds)?
                        }
                    };
                    out.push(sandbox::StepMount {
                        source,
                        target,
                        readonly: m.readonly,
                    });
                }
                ast::MountType::Secret => {
                    let id = m.id.clone().unwrap_or_default();
                    match self.opts.secrets.get(&id) {
                        Some(data) => out.push(sandbox::StepMount {
                            // BuildKit's defaults: root's, mode 0400.
                            source: sandbox::MountSource::Secret {
                                data: data.clone(),
                                mode: m.mode.unwrap_or(0o400),
                                uid: m.uid.unwrap_or(0),
                                gid: m.gid.unwrap_or(0),
                            },
                            target,
                            readonly: true,
                        }),
                        None if m.required => {
                            return Err(Error::Unsupported(format!(
                                "secret {id:?} is required; pass it with --secret id={id},src=FILE"
                            )))
                        }
                        None => {}
                    }
                }
                ast::MountType::Ssh => {
                    let id = m.id.clone().unwrap_or_else(|| "default".into());
                    match self.opts.ssh.get(&id) {
                        // The user's own agent socket, named on the command line (trusted).
                        Some(sock) => out.push(sandbox::StepMount {
                            source: sandbox::MountSource::Host(sock.clone()),
                            target,
                            readonly: false,
                        }),
                        None if m.required => {
                            return Err(Error::Unsupported(format!(
                                "RUN --mount=type=ssh,id={id} is required; forward an agent with --ssh {id} (your SSH_AUTH_SOCK) or --ssh {id}=SOCKET|KEY"
                            )))
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// A stage's filesystem flattened into a temporary directory (kept in `holds`), with `rel`
    /// to be resolved inside it (its symlinks and `..` cannot leave it).
    fn flattened(
        &self,
        st: &State,
        rel: &str,
        holds: &mut (Vec<fs::File>, Vec<tempfile::TempDir>),
    ) -> Result<sandbox::MountSource> {
        let tmp = self.scratch("bind")?;
        let root = tmp.path().join("root");
        snapshot::flatten(&self.snapshot_paths(st)?, &root)?;
        holds.1.push(tmp);
        Ok(sandbox::MountSource::Bind {
            root,
            path: rel.to_string(),
        })
    }

    /// `--chown` resolved against the stage's filesystem as it is before the step.
    fn chown(&self, state: &State, spec: Option<&Chown>) -> Result<Option<(u32, u32)>> {
        let Some(spec) = spec else { return Ok(None) };
        if let Some(ids) = spec.numeric() {
            return Ok(Some(ids));
        }
        let mut view = self.snapshot_paths(state)?;
        view.reverse();
        let passwd = sandbox::read_view(&view, "etc/passwd");
        let group = sandbox::read_view(&view, "etc/group");
        parse_chown_with(Some(spec), &passwd, &group)
    }

    /// On a cache hit (and without --no-cache), applies the cached layer and history entry.
    fn take_cached(&self, state: &mut State, keys: &Keys, history: String) -> bool {
        if self.opts.no_cache || state.no_cache {
            return false;
        }
        let Some(hit) = self.cached(&keys.content) else {
            return false;
        };
        self.use_hit(state, keys, hit, history);
        true
    }

    /// Applies a cached step's layer and history entry.
    fn use_hit(&self, state: &mut State, keys: &Keys, hit: CachedStep, history: String) {
        // docker refuses an image whose layer-less entries do not say `empty_layer`.
        let empty = hit.layer.is_none();
        let when = hit.created.unwrap_or(self.started);
        let hit = if hit.created.is_none() {
            // An entry from before times were kept (or an imported one without a time): from
            // now on this run's time is the step's.
            let c = CachedStep {
                layer: hit.layer,
                created: Some(when),
            };
            self.cache.put_step(&keys.content, &c);
            c
        } else {
            hit
        };
        // What --cache-to exports: every step used, cached ones included.
        self.record(&keys.content, &hit);
        if let Some(def) = &keys.def {
            self.remember(def, &hit);
        }
        self.push_layer(state, hit.layer, &keys.chain);
        self.history_at(state, history, empty, when);
    }

    /// When a config-only step (ENV, CMD, ...) first ran with this key, so that its history
    /// time, like a cached layer's, does not change between identical builds.
    fn config_step_time(&self, step_key: &str) -> i64 {
        if !self.opts.no_cache {
            if let Some(
                c @ CachedStep {
                    layer: None,
                    created: Some(t),
                },
            ) = self.cached(step_key)
            {
                self.record(step_key, &c);
                return t;
            }
        }
        self.remember(
            step_key,
            &CachedStep {
                layer: None,
                created: Some(self.started),
            },
        );
        self.started
    }

    /// The content of what a step's bind mounts read: context files, the result of a stage,
    /// an image's layers.
    fn mount_inputs(
        &self,
        mounts: &[dockerfile::plan::PlannedMount],
        platform: &Platform,
        deps: &HashMap<String, State>,
    ) -> Result<String> {
        let mut parts = Vec::new();
        for m in mounts.iter().filter(|m| m.kind == ast::MountType::Bind) {
            let rel = m.source.clone().unwrap_or_else(|| ".".into());
            parts.push(match &m.from {
                None | Some(Origin::Context) => {
                    self.fingerprint(&[PlannedSource::Path { path: rel }], &[])?
                }
                Some(Origin::Stage { key, .. }) => deps
                    .get(key)
                    .map(|s| s.key.clone())
                    .ok_or_else(|| Error::BadLayer {
                        layer: key.clone(),
                        reason: "a stage this mount reads was not built".into(),
                    })?,
                Some(Origin::Image { reference }) => self.base_image(reference, platform)?.key,
            });
        }
        Ok(key_of(
            &parts.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    }

    /// Puts what `sources` name from a stage's filesystem into `root`, reading only those paths
    /// through its layers (a pattern brings the directory above its first wildcard), not the
    /// whole stage.
    fn read_paths(
        &self,
        src: &State,
        sources: &[PlannedSource],
        root: &std::path::Path,
    ) -> Result<()> {
        let mut paths = Vec::new();
        for s in sources {
            if let PlannedSource::Path { path } = s {
                let fixed: Vec<&str> = path
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .take_while(|c| !c.contains(['*', '?', '[', '\\']))
                    .collect();
                paths.push(fixed.join("/"));
            }
        }
        let layers = self.snapshot_paths(src)?;
        if paths.iter().any(|p| p.is_empty()) {
            return snapshot::flatten(&layers, root);
        }
        snapshot::flatten_paths(&layers, root, &paths)
    }

    /// A scratch directory for one step under the build's work dir, removed on drop.
    fn scratch(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let dir = self.cache.tmp_dir();
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&dir)
            .map_err(io_err("creating a step directory in", &dir))
    }

    /// Writes the layer of what a step put in `upper`, remembers it under the step's key and adds
    /// it to the stage. The directory becomes the layer's snapshot (no unpacking it again). An
    /// empty RUN adds no layer; COPY and ADD always do (`keep_empty`), as docker's builder does.
    /// Returns whether a layer was added.
    fn commit_layer(
        &self,
        state: &mut State,
        upper: &std::path::Path,
        keys: &Keys,
        keep_empty: bool,
    ) -> Result<bool> {
        let written = self.store_layer(upper)?;
        let layer =
            (keep_empty || written.entries > 0).then_some((written.descriptor, written.diff_id));
        let step = CachedStep {
            layer: layer.clone(),
            created: Some(self.started),
        };
        self.remember(&keys.content, &step);
        if let Some(def) = &keys.def {
            self.remember(def, &step);
        }
        let added = layer.is_some();
        self.push_layer(state, layer, &keys.chain);
        Ok(added)
    }

    /// Writes the layer of a COPY or ADD (kept even when empty, as docker's builder does); the
    /// directory becomes its snapshot.
    fn write_layer(&self, upper: &std::path::Path) -> Result<(Descriptor, Digest)> {
        let written = self.store_layer(upper)?;
        Ok((written.descriptor, written.diff_id))
    }

    /// Writes `upper` as a layer blob, adopts it as the layer's snapshot and remembers the
    /// compressed form by diffID.
    fn store_layer(&self, upper: &std::path::Path) -> Result<layer::WrittenLayer> {
        let written = layer::write_to_store(upper, self.store, &self.opts.layer)?;
        if written.entries > 0 {
            self.snapshots.adopt(upper, &written.diff_id)?;
        }
        self.cache.put_blob(
            &written.diff_id,
            self.opts.layer.compression,
            self.opts.layer.level,
            &written.descriptor,
        );
        Ok(written)
    }

    /// Remembers `layer` as the step's result under its keys and adds it to the stage.
    fn take_layer(&self, state: &mut State, layer: (Descriptor, Digest), keys: &Keys) {
        let step = CachedStep {
            layer: Some(layer.clone()),
            created: Some(self.started),
        };
        self.remember(&keys.content, &step);
        if let Some(def) = &keys.def {
            self.remember(def, &step);
        }
        self.push_layer(state, Some(layer), &keys.chain);
    }

    /// The layer `make` writes, made once per build for `content`: see [`SharedLayers`].
    fn shared_layer(
        &self,
        content: &str,
        make: impl FnOnce() -> Result<(Descriptor, Digest)>,
    ) -> Result<(Descriptor, Digest)> {
        self.shared.get_or_make(content, make)
    }

    /// Adds a step's layer to the stage; the stage's key becomes `chain` with the layer's diffID.
    fn push_layer(&self, state: &mut State, layer: Option<(Descriptor, Digest)>, chain: &str) {
        match layer {
            Some((d, diff)) => {
                state.key = key_of(&[chain, &diff.to_string()]);
                state.own.insert(diff.clone());
                state.layers.push((d, diff));
            }
            None => state.key = chain.to_string(),
        }
    }

    fn snapshot_paths(&self, state: &State) -> Result<Vec<PathBuf>> {
        self.fetch_layers(&state.layers)?;
        state
            .layers
            .iter()
            .map(|(d, diff)| Ok(self.snapshots.unpack_blob(self.store, d, diff)?.path))
            .collect()
    }

    /// Layers arrive when their files are first needed: those neither unpacked nor in the store
    /// come from an imported cache, else from where their base image was resolved.
    fn fetch_layers(&self, layers: &[(Descriptor, Digest)]) -> Result<()> {
        let mut from_bases = Vec::new();
        for (d, diff) in layers {
            if self.snapshots.get(diff).is_some() || self.store.has_blob(&d.digest) {
                continue;
            }
            match &self.opts.imported {
                Some(imp) if imp.holds(&d.digest) => imp.fetch(self.store, d)?,
                _ => from_bases.push(d.clone()),
            }
        }
        if from_bases.is_empty() {
            return Ok(());
        }
        self.resolver
            .layers(&from_bases)
            .map_err(|reason| Error::Unsupported(format!("fetching base image layers: {reason}")))
    }

    /// A cached step, when its layer is still in the store, else from an imported cache.
    fn cached(&self, key: &str) -> Option<CachedStep> {
        let local = self.cache.step(key).filter(|c| match &c.layer {
            Some((d, _)) => self.store.blob_size(&d.digest) == Some(d.size),
            None => true,
        });
        local.or_else(|| self.opts.imported.as_ref()?.step(key))
    }

    fn remember(&self, key: &str, c: &CachedStep) {
        self.cache.put_step(key, c);
        self.record(key, c);
    }

    fn record(&self, key: &str, c: &CachedStep) {
        if let Ok(mut u) = self.used.lock() {
            u.push((key.to_string(), c.clone()));
        }
    }

    fn write_image(&self, platform: &Platform, state: &State) -> Result<PlatformImage> {
        let mut config = state.config.clone();
        config.architecture = platform.architecture.clone();
        config.os = platform.os.clone();
        config.variant = (!platform.variant.is_empty()).then(|| platform.variant.clone());
        // The latest step's time, so a fully cached build gives the same config; a stage with no
        // steps of its own keeps its base's.
        config.created = match (self.epoch, state.created, &config.created) {
            (Some(e), _, _) => Some(rfc3339(e)),
            (None, Some(t), _) => Some(rfc3339(t)),
            (None, None, Some(c)) => Some(c.clone()),
            (None, None, None) => Some(rfc3339(self.started)),
        };
        if !self.opts.labels.is_empty() {
            let cc = config.config.get_or_insert_with(Default::default);
            cc.labels
                .get_or_insert_with(BTreeMap::new)
                .extend(self.opts.labels.clone());
        }
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = state.layers.iter().map(|(_, d)| d.clone()).collect();
        // A base without history (crane, buildah, `FROM scratch` + ADD elsewhere) leaves layers
        // no entry describes; as BuildKit, give them entries so history and layers agree.
        let described = config
            .history
            .iter()
            .filter(|h| h.empty_layer != Some(true))
            .count();
        let missing = config.rootfs.diff_ids.len().saturating_sub(described);
        if missing > 0 {
            let filler = oci::manifest::History {
                created: config.created.clone(),
                comment: Some("base layer without history".into()),
                ..Default::default()
            };
            config
                .history
                .splice(0..0, std::iter::repeat_n(filler, missing));
        }
        let cfg = Document::new(config);
        self.store.put_bytes(cfg.bytes())?;
        let mut annotations = oci::Annotations::new();
        // The image this one builds on: its full reference, and the digest of the platform's
        // manifest, not the index's, as ko and crane write them (BuildKit writes neither).
        // `crane rebase` fetches the old base by this digest as one image.
        // Directory and OCI-layout contexts (`--build-context`) are no registry image.
        if let Some((name, digest)) = state.base.as_ref().filter(|(n, _)| !n.contains("://")) {
            annotations.insert(ANNOTATION_BASE_NAME.into(), name.clone());
            if let Some(d) = digest {
                annotations.insert(ANNOTATION_BASE_DIGEST.into(), d.to_string());
            }
        }
        for (scope, k, v) in &self.opts.annotations {
            if *scope == AnnotationScope::Manifest {
                annotations.insert(k.clone(), v.clone());
            }
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.into()),
            artifact_type: None,
            config: cfg.descriptor(mt::OCI_CONFIG),
            layers: state.layers.iter().map(|(d, _)| d.clone()).collect(),
            subject: None,
            annotations,
            extra: Default::default(),
        };
        let doc = Document::new(manifest);
        self.store.put_bytes(doc.bytes())?;
        let mut desc = doc.descriptor(mt::OCI_MANIFEST);
        desc.platform = Some(platform.clone());
        Ok(PlatformImage {
            platform: platform.clone(),
            manifest: desc,
            config: cfg.digest().clone(),
            own_layers: state.own.clone(),
        })
    }
}

/// Downloads `url` into `to`; returns the content digest and the Last-Modified time. With
/// `checksum` (ADD --checksum=sha256:…) the content must match it.
fn fetch_url(
    url: &str,
    to: &std::path::Path,
    checksum: Option<&str>,
) -> Result<(Digest, Option<std::time::SystemTime>)> {
    let fail = |why: String| Error::Unsupported(format!("ADD {url}: {why}"));
    let resp = ureq::get(url)
        .call()
        .map_err(|e| fail(format!("download failed: {e}")))?;
    let mtime = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let f = fs::File::create(to).map_err(io_err("creating", to))?;
    let mut w = oci::DigestWriter::new(std::io::BufWriter::new(f), oci::Algorithm::Sha256);
    std::io::copy(&mut reader, &mut w).map_err(|e| fail(format!("download interrupted: {e}")))?;
    let (bw, digest, _) = w.finish();
    bw.into_inner()
        .map_err(|e| fail(e.to_string()))?
        .sync_all()
        .map_err(io_err("writing", to))?;
    if let Some(want) = checksum {
        let want = Digest::parse(want).map_err(|e| fail(e.to_string()))?;
        if want != digest {
            return Err(fail(format!(
                "the download has checksum {digest}, but --checksum wants {want}"
            )));
        }
    }
    Ok((digest, mtime))
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) as a time.
fn parse_http_date(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    u64::try_from(secs)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// Is this file a tar archive, plain or compressed (ADD unpacks those)?
fn is_tar_archive(p: &std::path::Path) -> bool {
    let Ok(f) = fs::File::open(p) else {
        return false;
    };
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return false;
    }
    let Ok(mut r) = snapshot::decompress(f, None) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match std::io::Read::read(&mut r, &mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n == 512 && &head[257..262] == b"ustar"
}

fn stopped() -> Error {
    Error::Sandbox {
        what: "build".into(),
        reason: "stopped by another platform's failure".into(),
    }
}

fn poisoned() -> Error {
    Error::Sandbox {
        what: "build".into(),
        reason: "a build thread panicked".into(),
    }
}

fn key_of(parts: &[&str]) -> String {
    let mut h = oci::Algorithm::Sha256.hasher();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finish().to_string()
}

/// The argv of a RUN: exec form as written; shell form through the shell, with here-documents
/// given back to the shell (which knows `<<EOF`), or run as the script when the command is only
/// a here-document, as BuildKit does.
fn run_argv(command: &ast::Command, heredocs: &[ast::Heredoc], shell: &[String]) -> Vec<String> {
    match command {
        ast::Command::Exec(v) => v.clone(),
        ast::Command::Shell(text) => {
            let mut argv = shell.to_vec();
            if argv.is_empty() {
                argv = vec!["/bin/sh".into(), "-c".into()];
            }
            let only = heredocs.len() == 1 && {
                let t = text.trim().trim_start_matches("<<").trim_start_matches('-');
                t.trim_matches(|c| c == '"' || c == '\'') == heredocs[0].delimiter
            };
            if only {
                argv.push(heredocs[0].content.clone());
            } else {
                let mut full = text.clone();
                for h in heredocs {
                    full.push('\n');
                    full.push_str(&h.content);
                    if !h.content.ends_with('\n') && !h.content.is_empty() {
                        full.push('\n');
                    }
                    full.push_str(&h.delimiter);
                }
                argv.push(full);
            }
            argv
        }
    }
}

fn command_text(c: &ast::Command) -> String {
    match c {
        ast::Command::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
        ast::Command::Shell(s) => format!("/bin/sh -c {s}"),
    }
}

fn sources_text(sources: &[PlannedSource]) -> String {
    sources
        .iter()
        .map(|s| match s {
            PlannedSource::Path { path } => path.clone(),
            PlannedSource::Heredoc { name, .. } => format!("<<{name}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_vec(c: &ast::Command, shell: Option<&Vec<String>>) -> Vec<String> {
    match c {
        ast::Command::Exec(v) => v.clone(),
        ast::Command::Shell(s) => {
            let mut v = shell
                .cloned()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            v.push(s.clone());
            v
        }
    }
}

/// Applies an instruction that only changes the config; returns its history text.
fn fold_config(cc: &mut ContainerConfig, author: &mut Option<String>, op: &Op) -> String {
    match op {
        Op::Env { vars } => {
            let env = cc.env.get_or_insert_with(Vec::new);
            for kv in vars {
                let prefix = format!("{}=", kv.key);
                env.retain(|e| !e.starts_with(&prefix));
                env.push(format!("{}={}", kv.key, kv.value));
            }
            format!(
                "ENV {}",
                vars.iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        Op::Label { labels } => {
            let l = cc.labels.get_or_insert_with(BTreeMap::new);
            for kv in labels {
                l.insert(kv.key.clone(), kv.value.clone());
            }
            format!(
                "LABEL {}",
                labels
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        Op::Workdir { path } => {
            cc.working_dir = Some(path.clone());
            format!("WORKDIR {path}")
        }
        Op::User { user } => {
            cc.user = Some(user.clone());
            format!("USER {user}")
        }
        Op::Expose { ports } => {
            let e = cc.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in ports {
                let key = if p.contains('/') {
                    p.clone()
                } else {
                    format!("{p}/tcp")
                };
                e.insert(key, serde_json::json!({}));
            }
            format!("EXPOSE {}", ports.join(" "))
        }
        Op::Volume { paths } => {
            let v = cc.volumes.get_or_insert_with(BTreeMap::new);
            for p in paths {
                v.insert(p.clone(), serde_json::json!({}));
            }
            format!("VOLUME {paths:?}")
        }
        Op::Cmd { command, shell } => {
            cc.cmd = Some(command_vec(command, shell.as_ref()));
            format!("CMD {}", serde_json::to_string(&cc.cmd).unwrap_or_default())
        }
        Op::Entrypoint { command, shell } => {
            cc.entrypoint = Some(command_vec(command, shell.as_ref()));
            // Docker: a new ENTRYPOINT drops a CMD inherited from the base.
            cc.cmd = None;
            format!(
                "ENTRYPOINT {}",
                serde_json::to_string(&cc.entrypoint).unwrap_or_default()
            )
        }
        Op::Shell { shell } => {
            cc.shell = Some(shell.clone());
            format!("SHELL {shell:?}")
        }
        Op::Healthcheck { check, shell } => {
            cc.healthcheck = Some(match check {
                None => oci::manifest::Healthcheck {
                    test: Some(vec!["NONE".into()]),
                    ..Default::default()
                },
                Some(h) => {
                    let test = match &h.command {
                        ast::Command::Exec(v) => {
                            let mut t = vec!["CMD".to_string()];
                            t.extend(v.iter().cloned());
                            t
                        }
                        ast::Command::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                    };
                    let _ = shell;
                    oci::manifest::Healthcheck {
                        test: Some(test),
                        interval: h.interval.map(nanos),
                        timeout: h.timeout.map(nanos),
                        start_period: h.start_period.map(nanos),
                        start_interval: h.start_interval.map(nanos),
                        retries: h.retries.map(i64::from),
                        ..Default::default()
                    }
                }
            });
            "HEALTHCHECK".into()
        }
        Op::Stopsignal { signal } => {
            cc.stop_signal = Some(signal.clone());
            format!("STOPSIGNAL {signal}")
        }
        Op::Onbuild { trigger } => {
            cc.on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone());
            format!("ONBUILD {trigger}")
        }
        Op::Maintainer { name } => {
            *author = Some(name.clone());
            format!("MAINTAINER {name}")
        }
        Op::Run { .. } | Op::Copy { .. } | Op::Add { .. } => String::new(),
    }
}

/// `--chown=user[:group]` with names looked up in the stage's own /etc/passwd and /etc/group
/// (`passwd`, `group` are their text). docker: a user without a group gets the same numeric id
/// as its group.
fn parse_chown_with(s: Option<&Chown>, passwd: &str, group: &str) -> Result<Option<(u32, u32)>> {
    let Some(s) = s else { return Ok(None) };
    let lookup = |who: &Owner, table: &str, what: &str| -> Result<u32> {
        let name = match who {
            Owner::Id(n) => return Ok(*n),
            Owner::Name(name) => name,
        };
        table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[0] == name)
                    .then(|| f[2].parse().ok())
                    .flatten()
            })
            .next()
            .or((name == "root").then_some(0))
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "--chown={s}: no {what} {name:?} in the image's /etc/{}",
                    if what == "user" { "passwd" } else { "group" }
                ))
            })
    };
    let uid = lookup(&s.user, passwd, "user")?;
    let gid = match &s.group {
        Some(g) => lookup(g, group, "group")?,
        None => uid,
    };
    Ok(Some((uid, gid)))
}

#[cfg(test)]
fn parse_chown(s: Option<&str>) -> Result<Option<(u32, u32)>> {
    let c = s
        .map(Chown::parse)
        .transpose()
        .map_err(Error::Unsupported)?;
    parse_chown_with(c.as_ref(), "", "")
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Seconds since the epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn heredoc_runs() {
        let sh = vec!["/bin/sh".to_string(), "-c".to_string()];
        let h = ast::Heredoc {
            delimiter: "EOF".into(),
            content: "echo a\necho b\n".into(),
            expand: true,
            strip_tabs: false,
            pos: dockerfile::Pos { line: 1, column: 1 },
        };
        let argv = run_argv(
            &ast::Command::Shell("<<EOF".into()),
            std::slice::from_ref(&h),
            &sh,
        );
        assert_eq!(argv, ["/bin/sh", "-c", "echo a\necho b\n"]);
        let argv = run_argv(&ast::Command::Shell("cat > /x <<EOF".into()), &[h], &sh);
        assert_eq!(argv[2], "cat > /x <<EOF\necho a\necho b\nEOF");
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            1_700_000_000
        );
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn shared_layers_are_made_once_per_key() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let shared: SharedLayers<u32> = SharedLayers::default();
        let calls = AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (shared_ref, calls_ref) = (&shared, &calls);
        std::thread::scope(|s| {
            let first = s.spawn(move || {
                shared_ref.get_or_make("k", || {
                    let calls = calls_ref;
                    calls.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    // Hold the cell until the test lets go.
                    let _ = rx.recv();
                    Ok(7)
                })
            });
            // The first caller is inside `make`; a second one asks for the same key.
            started_rx.recv().unwrap();
            let second = s.spawn(|| {
                shared.get_or_make("k", || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(8)
                })
            });
            tx.send(()).unwrap();
            assert_eq!(first.join().unwrap().unwrap(), 7);
            assert_eq!(
                second.join().unwrap().unwrap(),
                7,
                "the one result, not made again"
            );
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(shared.get_or_make("other", || Ok(9)).unwrap(), 9);
        let err = shared
            .get_or_make("bad", || Err(Error::Unsupported("disk full".into())))
            .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let waiter = shared.get_or_make("bad", || Ok(1)).unwrap_err().to_string();
        assert!(
            waiter.contains("another platform") && waiter.contains("disk full"),
            "{waiter}"
        );
    }

    #[test]
    fn chown_by_id_and_by_name() {
        assert_eq!(parse_chown(Some("1000:1000")).unwrap(), Some((1000, 1000)));
        assert_eq!(parse_chown(Some("root")).unwrap(), Some((0, 0)));
        assert_eq!(parse_chown(Some("1000")).unwrap(), Some((1000, 1000)));
        assert!(parse_chown(Some("app")).is_err());
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(
            parse_chown_with(Some(&Chown::parse("app").unwrap()), passwd, group).unwrap(),
            Some((1001, 1001))
        );
        assert_eq!(
            parse_chown_with(Some(&Chown::parse("app:staff").unwrap()), passwd, group).unwrap(),
            Some((1001, 50))
        );
        let err = parse_chown_with(Some(&Chown::parse("ghost").unwrap()), passwd, group)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no user \"ghost\"") && err.contains("/etc/passwd"),
            "{err}"
        );
    }
}
