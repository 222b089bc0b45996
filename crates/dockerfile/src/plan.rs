//! Planning: which stages the target needs, ARG scoping and expansion per target platform, and
//! one instance per (stage, inputs). Instances are keyed by a digest of their resolved content,
//! so a stage whose inputs do not depend on the target platform (e.g. `FROM
//! --platform=$BUILDPLATFORM` without TARGET* args) gets one key shared by every platform.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use oci::{Digest, Platform, Reference};
use serde::Serialize;

use crate::ast::{self, Command, Dockerfile, Instruction, Kind, MountType, Source, Word};
use crate::error::{nearest, Error, ErrorKind, Pos};
use crate::expand::{expand_heredoc, expand_word};
use crate::values::{Chmod, Chown};

/// What to plan for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Stage name to build; the last stage when `None`.
    pub target: Option<String>,
    /// Target platforms, in output order.
    pub platforms: Vec<Platform>,
    /// The platform the build runs on (BUILDPLATFORM).
    pub build_platform: Platform,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// What is known of base images' configs, by (reference as the plan prints it, platform in
    /// short form). The engine may plan once, fetch the configs of the `Base::Image` references,
    /// and plan again: then `ENV PATH=/x:$PATH` expands against the image and its ONBUILD
    /// triggers run, as in BuildKit. Unknown images contribute nothing.
    pub base_configs: BTreeMap<(String, String), BaseConfig>,
    /// `--build-context NAME=...`, by [`context_name`]: the image reference that replaces a
    /// stage called NAME, `FROM NAME`, `COPY --from=NAME` and `RUN --mount from=NAME` (the
    /// caller turns directories and OCI layouts into references its image source knows).
    pub contexts: BTreeMap<String, String>,
}

/// How `--build-context` names are compared, as BuildKit does: the familiar form of the
/// reference without `:latest` (`alpine`, `docker.io/library/alpine:latest` and
/// `alpine:latest` are one name); a name that is no reference, lower-cased.
pub fn context_name(name: &str) -> String {
    match Reference::parse(name) {
        Ok(r) => {
            let f = r.familiar();
            f.strip_suffix(":latest").map(str::to_string).unwrap_or(f)
        }
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// The parts of a base image's config that planning uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseConfig {
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Config `Shell`; empty means the platform's default.
    pub shell: Vec<String>,
    /// Config `OnBuild`: instructions that run first in a stage built FROM this image.
    pub on_build: Vec<String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        let host = Platform::host();
        PlanOptions {
            target: None,
            platforms: vec![host.clone()],
            build_platform: host,
            build_args: BTreeMap::new(),
            base_configs: BTreeMap::new(),
            contexts: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildPlan {
    pub target: StageRef,
    pub platforms: Vec<PlatformPlan>,
    /// Every distinct stage instance, dependencies before dependents.
    pub stages: Vec<StageInstance>,
    pub warnings: Vec<String>,
}

impl BuildPlan {
    pub fn stage(&self, key: &str) -> Option<&StageInstance> {
        self.stages.iter().find(|s| s.key == key)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageRef {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlatformPlan {
    pub platform: Platform,
    /// Key of the target stage's instance.
    pub target: String,
    /// Keys of the instances this platform needs, in an order that builds dependencies first.
    pub stages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageInstance {
    /// `sha256:` of the instance's resolved content (everything below, dependencies by key).
    pub key: String,
    #[serde(flatten)]
    pub body: InstanceBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceBody {
    pub stage: StageRef,
    /// The platform this instance's filesystem is for.
    pub platform: Platform,
    pub base: Base,
    pub depends_on: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Base {
    Scratch,
    Image { reference: String },
    Stage { key: String, stage: StageRef },
}

/// Where COPY --from or a RUN mount's `from` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Context,
    Image { reference: String },
    Stage { key: String, stage: StageRef },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Position in the Dockerfile, or in the base image's trigger list for ONBUILD steps.
    pub pos: Pos,
    pub instruction: String,
    pub op: Op,
    /// A base image's ONBUILD trigger.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub onbuild: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlannedSource {
    Path { path: String },
    Heredoc { name: String, content: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedMount {
    #[serde(rename = "type")]
    pub kind: MountType,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing: Option<String>,
    /// Octal in the Dockerfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    pub readonly: bool,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// A resolved instruction. Fields are expanded; RUN/CMD/ENTRYPOINT text is not (the shell does
/// that at run time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Run {
        command: Command,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        heredocs: Vec<ast::Heredoc>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        mounts: Vec<PlannedMount>,
        #[serde(skip_serializing_if = "Option::is_none")]
        network: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        security: Option<String>,
        /// ENV values: the base image's (when given in `PlanOptions::base_configs`) and this
        /// Dockerfile's.
        env: BTreeMap<String, String>,
        /// ARG values in effect, also environment for RUN. They win over `env` entries of the
        /// same name: BuildKit keeps one environment in declaration order, and a later ENV
        /// removes the ARG from this map.
        args: BTreeMap<String, String>,
        /// `None`: the base image's working directory.
        #[serde(skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        shell: Vec<String>,
    },
    Copy {
        from: Origin,
        sources: Vec<PlannedSource>,
        dest: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chown: Option<Chown>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chmod: Option<Chmod>,
        link: bool,
        parents: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    Add {
        sources: Vec<PlannedSource>,
        dest: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chown: Option<Chown>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chmod: Option<Chmod>,
        link: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
        keep_git_dir: bool,
    },
    Env {
        vars: Vec<KeyValue>,
    },
    Label {
        labels: Vec<KeyValue>,
    },
    Workdir {
        path: String,
    },
    User {
        user: String,
    },
    Expose {
        ports: Vec<String>,
    },
    Volume {
        paths: Vec<String>,
    },
    Cmd {
        command: Command,
        /// The shell in effect, for the shell form.
        #[serde(skip_serializing_if = "Option::is_none")]
        shell: Option<Vec<String>>,
    },
    Entrypoint {
        command: Command,
        /// The shell in effect, for the shell form.
        #[serde(skip_serializing_if = "Option::is_none")]
        shell: Option<Vec<String>>,
    },
    Shell {
        shell: Vec<String>,
    },
    Healthcheck {
        check: Option<ast::Healthcheck>,
        #[serde(skip_serializing_if = "Option::is_none")]
        shell: Option<Vec<String>>,
    },
    Stopsignal {
        signal: String,
    },
    Onbuild {
        trigger: String,
    },
    Maintainer {
        name: String,
    },
}

/// A stage as written.
struct StageDef<'a> {
    index: usize,
    /// Lower-cased, as BuildKit compares names.
    name: Option<String>,
    from: &'a ast::From,
    body: Vec<&'a Instruction>,
}

impl StageDef<'_> {
    fn stage_ref(&self) -> StageRef {
        StageRef {
            index: self.index,
            name: self.name.clone(),
        }
    }
}

/// Build args BuildKit accepts without an ARG (proxies and frontend switches).
fn is_builtin_arg(name: &str) -> bool {
    const PROXIES: [&str; 5] = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];
    PROXIES.iter().any(|p| p.eq_ignore_ascii_case(name))
        || name.starts_with("BUILDKIT_")
        || name == "SOURCE_DATE_EPOCH"
}

fn platform_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        m.insert(format!("{prefix}PLATFORM"), p.short());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(format!("{prefix}VARIANT"), p.variant.clone());
    }
    m
}

/// The stages of a Dockerfile and its global ARGs.
struct Stages<'a> {
    global_args: Vec<&'a ast::ArgDecl>,
    global_names: HashSet<&'a str>,
    defs: Vec<StageDef<'a>>,
    /// Lower-cased name to the indexes of the stages of that name, in order.
    by_name: HashMap<String, Vec<usize>>,
    /// Stage names in order, each once.
    names: Vec<String>,
}

fn stages(df: &Dockerfile) -> Stages<'_> {
    let mut global_args = Vec::new();
    let mut defs: Vec<StageDef<'_>> = Vec::new();
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    let mut names = Vec::new();
    for ins in &df.instructions {
        match (&ins.kind, defs.last_mut()) {
            (Kind::From(f), _) => {
                // Duplicate names are legal (DuplicateStageName is only a lint): as in
                // BuildKit, later lookups see the last stage of that name.
                let name = f.name.as_ref().map(|n| n.raw.to_ascii_lowercase());
                if let Some(n) = &name {
                    let v = by_name.entry(n.clone()).or_default();
                    if v.is_empty() {
                        names.push(n.clone());
                    }
                    v.push(defs.len());
                }
                defs.push(StageDef {
                    index: defs.len(),
                    name,
                    from: f,
                    body: Vec::new(),
                });
            }
            (Kind::Arg { args }, None) => global_args.extend(args.iter()),
            (_, Some(d)) => d.body.push(ins),
            // The parser rejects other instructions before FROM.
            (_, None) => {}
        }
    }
    let global_names = global_args.iter().map(|a| a.name.as_str()).collect();
    Stages {
        global_args,
        global_names,
        defs,
        by_name,
        names,
    }
}

impl Stages<'_> {
    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// The last stage named `lower` (already lower-cased) before stage `before`.
    fn named_before(&self, lower: &str, before: usize) -> Option<usize> {
        let v = self.by_name.get(lower)?;
        let k = v.partition_point(|&i| i < before);
        k.checked_sub(1).map(|k| v[k])
    }
}

/// The final state of a stage instance, inherited by stages built `FROM` it.
#[derive(Clone, Default)]
struct StageState {
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    shell: Vec<String>,
    platform: Platform,
}

struct Planner<'a> {
    df: &'a Dockerfile,
    st: Stages<'a>,
    opts: &'a PlanOptions,
    esc: char,
    /// Build args some ARG declared.
    consumed: BTreeSet<String>,
    instances: Vec<StageInstance>,
    instance_keys: HashSet<String>,
    /// Validation only (`--check`): steps are checked, then dropped.
    keep_steps: bool,
}

/// Per target platform.
struct Pass {
    target: Platform,
    meta: BTreeMap<String, String>,
    auto: BTreeMap<String, String>,
    done: HashMap<usize, (String, StageState)>,
    order: Vec<String>,
    ordered: HashSet<String>,
}

/// A stage being planned. Planning is a loop over an explicit stack of these, never recursion:
/// a chain of 10,000 `FROM previous` stages needs no call stack.
struct Frame {
    i: usize,
    started: Option<Started>,
    /// The base image's ONBUILD triggers, planned before the stage's own instructions.
    triggers: Vec<Instruction>,
}

struct Started {
    base: Base,
    state: StageState,
    deps: Vec<String>,
    dep_set: HashSet<String>,
    args: BTreeMap<String, String>,
    steps: Vec<Step>,
    /// The next instruction (triggers first, then the stage's own).
    next: usize,
    /// Replaced whole by a `--build-context` of its name: none of its instructions run.
    replaced: bool,
}

/// Stages a step needs before it can be planned.
type Need = Vec<(usize, Pos)>;

enum Progress<T> {
    Done(T),
    Need(Need),
}

/// Plans the build of `opts.target` (or the last stage) for every platform in `opts.platforms`.
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<BuildPlan, Error> {
    plan_with(df, opts, true)
}

/// Everything [`plan`] checks, without keeping the steps: what `--check` needs, in memory
/// proportional to the Dockerfile rather than to (steps x platforms x environment). Returns the
/// plan's warnings.
pub fn validate(df: &Dockerfile, opts: &PlanOptions) -> Result<Vec<String>, Error> {
    plan_with(df, opts, false).map(|p| p.warnings)
}

fn plan_with(df: &Dockerfile, opts: &PlanOptions, keep_steps: bool) -> Result<BuildPlan, Error> {
    if opts.platforms.is_empty() {
        return Err(Error::new(ErrorKind::NoPlatforms, None)
            .with_help("pass at least one platform, such as linux/amd64"));
    }
    let st = stages(df);
    let target_idx = match &opts.target {
        None => st.defs.len().checked_sub(1),
        Some(t) => st
            .by_name
            .get(&t.to_ascii_lowercase())
            .and_then(|v| v.last().copied()),
    };
    let Some(target_idx) = target_idx else {
        let names = st.names();
        let wanted = opts.target.clone().unwrap_or_default();
        let help = match nearest(&wanted, &names) {
            Some(n) => format!("did you mean {n:?}? stages: {}", names.join(", ")),
            None if names.is_empty() => "the Dockerfile names no stage (FROM ... AS <name>)".into(),
            None => format!("stages: {}", names.join(", ")),
        };
        return Err(Error::new(ErrorKind::UnknownTarget(wanted), None).with_help(help));
    };
    let target = st.defs[target_idx].stage_ref();
    let mut p = Planner {
        df,
        st,
        opts,
        esc: df.directives.escape,
        consumed: BTreeSet::new(),
        instances: Vec::new(),
        instance_keys: HashSet::new(),
        keep_steps,
    };
    let mut platforms = Vec::new();
    for tp in &opts.platforms {
        let mut auto = platform_args(tp, &opts.build_platform);
        // As in BuildKit, --build-arg may override the automatic platform args.
        for (k, v) in auto.iter_mut() {
            if let Some(o) = opts.build_args.get(k) {
                *v = o.clone();
                p.consumed.insert(k.clone());
            }
        }
        let meta = p.meta_args(&auto)?;
        let mut pass = Pass {
            target: tp.clone(),
            meta,
            auto,
            done: HashMap::new(),
            order: Vec::new(),
            ordered: HashSet::new(),
        };
        let key = p.resolve(target_idx, &mut pass)?;
        platforms.push(PlatformPlan {
            platform: tp.clone(),
            target: key,
            stages: pass.order,
        });
    }
    let mut warnings = Vec::new();
    let declared: Vec<&str> = p.all_arg_names();
    for name in opts.build_args.keys() {
        if p.consumed.contains(name) || is_builtin_arg(name) {
            continue;
        }
        let mut w = format!("build-arg {name} was not consumed by any ARG");
        if declared.contains(&name.as_str()) {
            w.push_str(" (only stages this target does not need declare it)");
        } else if let Some(n) = nearest(name, &declared) {
            w.push_str(&format!(" (did you mean {n}?)"));
        }
        warnings.push(w);
    }
    Ok(BuildPlan {
        target,
        platforms,
        stages: p.instances,
        warnings,
    })
}

impl<'a> Planner<'a> {
    fn all_arg_names(&self) -> Vec<&'a str> {
        let mut seen = HashSet::new();
        let mut v: Vec<&str> = Vec::new();
        let stage_args = self.df.instructions.iter().flat_map(|ins| match &ins.kind {
            Kind::Arg { args } => args.as_slice(),
            _ => &[],
        });
        for a in stage_args {
            if seen.insert(a.name.as_str()) {
                v.push(a.name.as_str());
            }
        }
        v
    }

    fn err(&self, kind: ErrorKind, pos: Pos) -> Error {
        self.df.error(kind, pos)
    }

    fn expand(&self, w: &Word, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Error> {
        expand_word(&w.raw, &env, self.esc).map_err(|m| self.err(ErrorKind::Expansion(m), w.pos))
    }

    /// Global ARGs: visible in FROM lines; build args override defaults.
    fn meta_args(
        &mut self,
        auto: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut meta = auto.clone();
        for a in self.st.global_args.clone() {
            let value = if let Some(v) = self.opts.build_args.get(&a.name) {
                self.consumed.insert(a.name.clone());
                Some(v.clone())
            } else if let Some(d) = &a.default {
                let m = &meta;
                let lookup = |n: &str| m.get(n).cloned();
                Some(
                    expand_word(d, &lookup, self.esc)
                        .map_err(|e| self.err(ErrorKind::Expansion(e), a.pos))?,
                )
            } else {
                None
            };
            if let Some(v) = value {
                meta.insert(a.name.clone(), v);
            }
        }
        Ok(meta)
    }

    /// The reference a `--build-context` gives for `name` (never for `scratch` or `context`).
    fn context_for(&self, name: &str) -> Option<String> {
        if self.opts.contexts.is_empty()
            || name.eq_ignore_ascii_case("scratch")
            || name.eq_ignore_ascii_case("context")
        {
            return None;
        }
        self.opts.contexts.get(&context_name(name)).cloned()
    }

    /// Which stage a `--from` / `from=` value names, if any. Names win over indexes.
    fn stage_named(&self, value: &str, pos: Pos) -> Result<Option<usize>, Error> {
        let lower = value.to_ascii_lowercase();
        if let Some(&i) = self.st.by_name.get(&lower).and_then(|v| v.last()) {
            return Ok(Some(i));
        }
        if let Ok(i) = value.parse::<usize>() {
            if i < self.st.defs.len() {
                return Ok(Some(i));
            }
            return Err(self.unknown_stage(value, pos));
        }
        // A bare word close to a stage name is a typo, not an image on Docker Hub; a word that
        // is not a valid reference cannot be an image either.
        let names = self.st.names();
        let bare = !value.contains(['/', ':', '@']);
        if (bare && nearest(value, &names).is_some()) || Reference::parse(value).is_err() {
            return Err(self.unknown_stage(value, pos));
        }
        Ok(None)
    }

    fn unknown_stage(&self, value: &str, pos: Pos) -> Error {
        let names = self.st.names();
        let e = self.err(ErrorKind::UnknownStage(value.to_string()), pos);
        match nearest(value, &names) {
            Some(n) => e.with_help(format!("did you mean {n:?}? stages: {}", names.join(", "))),
            None if names.is_empty() => e.with_help(format!(
                "no stage has a name; stages are numbered 0 to {}",
                self.st.defs.len().saturating_sub(1)
            )),
            None => e.with_help(format!("stages: {}", names.join(", "))),
        }
    }

    /// Where `--from`/`from=` reads. A stage not planned yet in this pass is a [`Need`].
    fn origin(&self, value: &str, pos: Pos, pass: &Pass) -> Result<Progress<Origin>, Error> {
        let stage = match self.stage_named(value, pos) {
            Err(_) if self.context_for(value).is_some() => None,
            other => other?,
        };
        match stage {
            Some(i) => match pass.done.get(&i) {
                Some((key, _)) => Ok(Progress::Done(Origin::Stage {
                    key: key.clone(),
                    stage: self.st.defs[i].stage_ref(),
                })),
                None => Ok(Progress::Need(vec![(i, pos)])),
            },
            None if self.context_for(value).is_some() => Ok(Progress::Done(Origin::Image {
                reference: self.context_for(value).unwrap_or_default(),
            })),
            None => {
                let r = Reference::parse(value).map_err(|e| {
                    self.err(
                        ErrorKind::InvalidReference {
                            value: value.to_string(),
                            reason: reason(e),
                        },
                        pos,
                    )
                })?;
                Ok(Progress::Done(Origin::Image {
                    reference: r.to_string(),
                }))
            }
        }
    }

    /// Plans stage `i` and every stage it needs, with an explicit stack.
    fn resolve(&mut self, i: usize, pass: &mut Pass) -> Result<String, Error> {
        let mut stack = vec![Frame {
            i,
            started: None,
            triggers: Vec::new(),
        }];
        let mut on_stack: HashSet<usize> = HashSet::from([i]);
        while let Some(top) = stack.last_mut() {
            if pass.done.contains_key(&top.i) {
                on_stack.remove(&top.i);
                stack.pop();
                continue;
            }
            match self.advance(top, pass)? {
                Progress::Done(()) => {
                    on_stack.remove(&top.i);
                    stack.pop();
                }
                Progress::Need(needs) if needs.is_empty() => return Err(self.not_started(top.i)),
                Progress::Need(needs) => {
                    for (j, pos) in needs.into_iter().rev() {
                        if on_stack.contains(&j) {
                            return Err(self.cycle(&stack, j, pos));
                        }
                        if pass.done.contains_key(&j) {
                            continue;
                        }
                        on_stack.insert(j);
                        stack.push(Frame {
                            i: j,
                            started: None,
                            triggers: Vec::new(),
                        });
                    }
                }
            }
        }
        pass.done.get(&i).map(|d| d.0.clone()).ok_or_else(|| {
            self.err(
                ErrorKind::Syntax("stage was not planned".into()),
                Pos::default(),
            )
        })
    }

    /// Unreachable: a frame is started before its steps. An error rather than a loop if not.
    fn not_started(&self, i: usize) -> Error {
        self.err(
            ErrorKind::Syntax(format!("internal error: stage {i} was not started")),
            Pos::default(),
        )
    }

    fn cycle(&self, stack: &[Frame], j: usize, pos: Pos) -> Error {
        let label = |s: usize| {
            self.st.defs[s]
                .name
                .clone()
                .unwrap_or_else(|| format!("stage {s}"))
        };
        let start = stack.iter().position(|f| f.i == j).unwrap_or(0);
        let mut chain: Vec<String> = stack[start..].iter().map(|f| label(f.i)).collect();
        chain.push(label(j));
        self.err(ErrorKind::Cycle(chain.join(" -> ")), pos)
            .with_help("a stage cannot use itself, directly or through other stages")
    }

    /// Plans as much of `frame`'s stage as its dependencies allow.
    fn advance(&mut self, frame: &mut Frame, pass: &mut Pass) -> Result<Progress<()>, Error> {
        let i = frame.i;
        if frame.started.is_none() {
            match self.start(i, pass)? {
                Progress::Done((s, t)) => {
                    frame.started = Some(s);
                    frame.triggers = t;
                }
                Progress::Need(n) => return Ok(Progress::Need(n)),
            }
        }
        let Frame {
            started, triggers, ..
        } = frame;
        let Some(s) = started.as_mut() else {
            return Err(self.not_started(i));
        };
        let own_len = match s.replaced {
            true => 0,
            false => self.st.defs[i].body.len(),
        };
        let total = triggers.len() + own_len;
        while s.next < total {
            let n = s.next;
            let onbuild = n < triggers.len();
            let ins: &Instruction = if onbuild {
                &triggers[n]
            } else {
                self.st.defs[i].body[n - triggers.len()]
            };
            let step = match self.step(i, ins, onbuild, pass, s)? {
                Progress::Done(step) => step,
                Progress::Need(need) => return Ok(Progress::Need(need)),
            };
            if let Some(step) = step {
                if self.keep_steps {
                    s.steps.push(step);
                }
            }
            s.next += 1;
        }
        let Some(s) = started.take() else {
            return Err(self.not_started(i));
        };
        let body = InstanceBody {
            stage: self.st.defs[i].stage_ref(),
            platform: s.state.platform.clone(),
            base: s.base,
            depends_on: s.deps,
            steps: s.steps,
        };
        let key = if self.keep_steps {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            Digest::sha256_of(&bytes).to_string()
        } else {
            format!("{i}/{}", body.platform.short())
        };
        if self.instance_keys.insert(key.clone()) && self.keep_steps {
            self.instances.push(StageInstance {
                key: key.clone(),
                body,
            });
        }
        if pass.ordered.insert(key.clone()) {
            pass.order.push(key.clone());
        }
        pass.done.insert(i, (key, s.state));
        Ok(Progress::Done(()))
    }

    /// The base of stage `i`: an image, scratch, or an earlier stage (which must be planned).
    fn start(&self, i: usize, pass: &Pass) -> Result<Progress<(Started, Vec<Instruction>)>, Error> {
        let def_from = self.st.defs[i].from;
        let meta = &pass.meta;
        let meta_lookup = |n: &str| meta.get(n).cloned();
        let image = self.expand(&def_from.image, &meta_lookup)?;
        if image.is_empty() {
            return Err(self
                .err(
                    ErrorKind::Syntax(format!(
                        "base name ({}) should not be blank",
                        def_from.image.raw
                    )),
                    def_from.image.pos,
                )
                .with_help(
                    "declare the ARG with a default before the first FROM, or pass --build-arg",
                ));
        }
        let explicit_platform = match &def_from.platform {
            Some(w) => {
                let v = self.expand(w, &meta_lookup)?;
                Some(Platform::parse(&v).map_err(|e| {
                    self.err(
                        ErrorKind::InvalidPlatform {
                            value: v.clone(),
                            reason: reason(e),
                        },
                        w.pos,
                    )
                })?)
            }
            None => None,
        };
        // As BuildKit: FROM matches earlier stage names exactly (they are lower case), so
        // `FROM Build` is an image reference, not the stage `build`.
        let replaced = self.st.defs[i]
            .name
            .as_deref()
            .and_then(|n| self.context_for(n));
        let parent = match replaced {
            Some(_) => None,
            None => self.st.named_before(&image, i),
        };
        let mut deps = Vec::new();
        let mut triggers: Vec<Instruction> = Vec::new();
        let (base, mut state) = match parent {
            Some(pi) => {
                let Some((key, state)) = pass.done.get(&pi) else {
                    return Ok(Progress::Need(vec![(pi, def_from.image.pos)]));
                };
                deps.push(key.clone());
                (
                    Base::Stage {
                        key: key.clone(),
                        stage: self.st.defs[pi].stage_ref(),
                    },
                    state.clone(),
                )
            }
            None => {
                let platform = explicit_platform.clone().unwrap_or(pass.target.clone());
                let shell = default_shell(&platform);
                let base = if let Some(r) = replaced.clone().or_else(|| self.context_for(&image)) {
                    Base::Image { reference: r }
                } else if image.eq_ignore_ascii_case("scratch") {
                    Base::Scratch
                } else {
                    let r = Reference::parse(&image).map_err(|e| {
                        self.err(
                            ErrorKind::InvalidReference {
                                value: image.clone(),
                                reason: reason(e),
                            },
                            def_from.image.pos,
                        )
                    })?;
                    Base::Image {
                        reference: r.to_string(),
                    }
                };
                let config = match &base {
                    Base::Image { reference } => self
                        .opts
                        .base_configs
                        .get(&(reference.clone(), platform.short())),
                    _ => None,
                };
                let mut state = StageState {
                    shell,
                    platform: platform.clone(),
                    // scratch has no config: its working directory is the root.
                    workdir: matches!(base, Base::Scratch).then(|| "/".to_string()),
                    ..Default::default()
                };
                if let (Some(c), Base::Image { reference }) = (config, &base) {
                    state.env = c.env.clone();
                    state.workdir = c.working_dir.clone().filter(|w| !w.is_empty());
                    state.user = c.user.clone().filter(|u| !u.is_empty());
                    if !c.shell.is_empty() {
                        state.shell = c.shell.clone();
                    }
                    if replaced.is_none() {
                        triggers = parse_triggers(reference, &c.on_build)?;
                    }
                }
                (base, state)
            }
        };
        if let Some(p) = explicit_platform {
            state.platform = p;
        }
        let dep_set = deps.iter().cloned().collect();
        Ok(Progress::Done((
            Started {
                base,
                state,
                deps,
                dep_set,
                args: BTreeMap::new(),
                steps: Vec::new(),
                next: 0,
                replaced: replaced.is_some(),
            },
            triggers,
        )))
    }

    /// One instruction of stage `i`. Nothing in `s` changes unless it returns `Done`, so a step
    /// that needs another stage first runs again, whole, once that stage is planned.
    fn step(
        &mut self,
        i: usize,
        ins: &Instruction,
        onbuild: bool,
        pass: &Pass,
        s: &mut Started,
    ) -> Result<Progress<Option<Step>>, Error> {
        let Started {
            state,
            args,
            deps,
            dep_set,
            ..
        } = s;
        if let Kind::Arg { args: decls } = &ins.kind {
            self.arg(decls, state, args, pass)?;
            return Ok(Progress::Done(None));
        }
        // One environment in declaration order: an ARG shadows earlier ENV values (also the
        // base image's); an ENV evicts the ARG of its name.
        let lookup = |n: &str| args.get(n).or_else(|| state.env.get(n)).cloned();
        // One environment in declaration order: an ARG shadows earlier ENV values (also the
        // base image's); an ENV evicts the ARG of its name.
        let op = match &ins.kind {
            Kind::Arg { .. } => return Ok(Progress::Done(None)),
            Kind::Env { vars } => {
                let mut out = Vec::new();
                for kv in vars {
                    let w = |raw: &str| Word {
                        raw: raw.to_string(),
                        pos: kv.pos,
                    };
                    let key = self.expand(&w(&kv.key), &lookup)?;
                    let value = self.expand(&w(&kv.value), &lookup)?;
                    out.push(KeyValue { key, value });
                }
                for kv in &out {
                    state.env.insert(kv.key.clone(), kv.value.clone());
                    args.remove(&kv.key);
                }
                Op::Env { vars: out }
            }
            Kind::Label { labels } => {
                let mut out = Vec::new();
                for kv in labels {
                    let w = |raw: &str| Word {
                        raw: raw.to_string(),
                        pos: kv.pos,
                    };
                    out.push(KeyValue {
                        key: self.expand(&w(&kv.key), &lookup)?,
                        value: self.expand(&w(&kv.value), &lookup)?,
                    });
                }
                Op::Label { labels: out }
            }
            Kind::Run(r) => {
                let mut mounts = Vec::new();
                let mut need = Vec::new();
                for m in &r.mounts {
                    match self.mount(m, state.workdir.as_deref(), &lookup, pass)? {
                        Progress::Done(pm) => mounts.push(pm),
                        Progress::Need(n) => need.extend(n),
                    }
                }
                if !need.is_empty() {
                    return Ok(Progress::Need(need));
                }
                for m in &mounts {
                    if let Some(Origin::Stage { key, .. }) = &m.from {
                        if dep_set.insert(key.clone()) {
                            deps.push(key.clone());
                        }
                    }
                }
                let opt = |w: &Option<Box<Word>>| -> Result<Option<String>, Error> {
                    w.as_ref().map(|w| self.expand(w, &lookup)).transpose()
                };
                let network = opt(&r.network)?;
                if let Some(n) = &network {
                    if !matches!(n.as_str(), "default" | "none" | "host") {
                        return Err(self.err(
                            ErrorKind::Syntax(format!("unsupported value {n:?} for --network")),
                            ins.pos,
                        ));
                    }
                }
                let security = opt(&r.security)?;
                if let Some(n) = &security {
                    if !matches!(n.as_str(), "sandbox" | "insecure") {
                        return Err(self.err(
                            ErrorKind::Syntax(format!("unsupported value {n:?} for --security")),
                            ins.pos,
                        ));
                    }
                }
                // `--check` drops the step: copying the environment into each RUN only to
                // drop it would make ENV x RUN quadratic.
                let keep = self.keep_steps;
                Op::Run {
                    command: if keep {
                        r.command.to_owned_command()
                    } else {
                        Command::Exec(Vec::new())
                    },
                    heredocs: if keep { r.heredocs.clone() } else { Vec::new() },
                    mounts,
                    network,
                    security,
                    env: if keep {
                        state.env.clone()
                    } else {
                        BTreeMap::new()
                    },
                    args: if keep { args.clone() } else { BTreeMap::new() },
                    workdir: state.workdir.clone(),
                    user: state.user.clone(),
                    shell: state.shell.clone(),
                }
            }
            Kind::Copy(c) | Kind::Add(c) => {
                let add = matches!(ins.kind, Kind::Add(_));
                // The origin first: it may need another stage planned.
                let from = match &c.from {
                    Some(w) if !add => {
                        let plain = |_: &str| None;
                        let literal = expand_word(&w.raw, &plain, self.esc).ok();
                        if literal.as_deref() != Some(w.raw.as_str()) {
                            return Err(self
                                .err(
                                    ErrorKind::Syntax(
                                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround".into(),
                                    ),
                                    w.pos,
                                )
                                .with_help("write `ARG IMG=...` before the first FROM, `FROM ${IMG} AS src`, then `COPY --from=src`"));
                        }
                        if let Some(j) = self.stage_named(&w.raw, w.pos)? {
                            if j >= i {
                                let here = self.st.defs[i]
                                    .name
                                    .clone()
                                    .unwrap_or_else(|| i.to_string());
                                return Err(self
                                    .err(
                                        ErrorKind::Syntax(format!(
                                            "cannot copy from stage {:?}, it needs to be defined before current stage {here:?}",
                                            w.raw
                                        )),
                                        w.pos,
                                    )
                                    .with_help("move the stage it copies from above this one"));
                            }
                        }
                        match self.origin(&w.raw, w.pos, pass)? {
                            Progress::Done(o) => o,
                            Progress::Need(n) => return Ok(Progress::Need(n)),
                        }
                    }
                    _ => Origin::Context,
                };
                if let Origin::Stage { key, .. } = &from {
                    if dep_set.insert(key.clone()) {
                        deps.push(key.clone());
                    }
                }
                let opt = |w: &Option<Word>| -> Result<Option<String>, Error> {
                    w.as_ref().map(|w| self.expand(w, &lookup)).transpose()
                };
                let mut sources = Vec::new();
                for src in &c.sources {
                    match src {
                        // Each source is one word after expansion (BuildKit's
                        // SingleWordExpander): `$FILES` never becomes several sources.
                        Source::Path(w) => {
                            let path = self.expand(w, &lookup)?;
                            if !add && is_url(&path) {
                                return Err(self
                                    .err(
                                        ErrorKind::Syntax("source can't be a URL for COPY".into()),
                                        w.pos,
                                    )
                                    .with_help("use ADD for remote files"));
                            }
                            sources.push(PlannedSource::Path { path });
                        }
                        Source::Heredoc(h) => {
                            let content = if h.expand {
                                expand_heredoc(&h.content, &lookup)
                                    .map_err(|e| self.err(ErrorKind::Expansion(e), h.pos))?
                            } else {
                                h.content.clone()
                            };
                            sources.push(PlannedSource::Heredoc {
                                name: h.delimiter.clone(),
                                content,
                            });
                        }
                    }
                }
                let dest = self.expand(&c.dest, &lookup)?;
                let mut exclude = Vec::new();
                for w in &c.exclude {
                    exclude.push(self.expand(w, &lookup)?);
                }
                let chown = match (opt(&c.chown)?, &c.chown) {
                    (Some(v), Some(w)) => Some(Chown::parse(&v).map_err(|e| {
                        self.err(ErrorKind::Syntax(e), w.pos)
                            .with_help("write --chown=USER[:GROUP], names or numbers")
                    })?),
                    _ => None,
                };
                let chmod = match (opt(&c.chmod)?, &c.chmod) {
                    (Some(v), Some(w)) => {
                        Some(Chmod::parse(&v).map_err(|e| self.err(ErrorKind::Syntax(e), w.pos))?)
                    }
                    _ => None,
                };
                if add {
                    let checksum = opt(&c.checksum)?;
                    let paths = || {
                        sources.iter().filter_map(|s| match s {
                            PlannedSource::Path { path } => Some(path.as_str()),
                            PlannedSource::Heredoc { .. } => None,
                        })
                    };
                    if let (Some(_), Some(w)) = (&checksum, &c.checksum) {
                        let problem = if sources.len() != 1 {
                            Some("checksum can't be specified for multiple sources")
                        } else if !paths().all(|p| is_url(p) || is_git(p)) {
                            Some("checksum requires HTTP(S) or Git sources")
                        } else {
                            None
                        };
                        if let Some(msg) = problem {
                            return Err(self.err(ErrorKind::Syntax(msg.into()), w.pos));
                        }
                    }
                    // The engine unpacks local archives and never remote ones: only the
                    // --unpack values that match that are supported for now.
                    if let Some(u) = c.unpack {
                        let off_default = paths().any(|p| is_url(p) == u);
                        if off_default {
                            return Err(self
                                .err(
                                    ErrorKind::Syntax(format!(
                                        "ADD --unpack={u} is not supported yet for {} sources",
                                        if u { "remote" } else { "local" }
                                    )),
                                    ins.pos,
                                )
                                .with_help(if u {
                                    "fetch the archive with ADD, then unpack it with RUN tar -xf"
                                } else {
                                    "rename the archive or COPY it: ADD unpacks local archives"
                                }));
                        }
                    }
                    Op::Add {
                        sources,
                        dest,
                        workdir: state.workdir.clone(),
                        chown,
                        chmod,
                        link: c.link,
                        exclude,
                        checksum,
                        keep_git_dir: c.keep_git_dir,
                    }
                } else {
                    Op::Copy {
                        from,
                        sources,
                        dest,
                        workdir: state.workdir.clone(),
                        chown,
                        chmod,
                        link: c.link,
                        parents: c.parents,
                        exclude,
                    }
                }
            }
            Kind::Workdir { path } => {
                let p = self.expand(path, &lookup)?;
                let resolved = resolve_workdir(state.workdir.as_deref(), &p);
                state.workdir = Some(resolved.clone());
                Op::Workdir { path: resolved }
            }
            Kind::User { user } => {
                let u = self.expand(user, &lookup)?;
                state.user = Some(u.clone());
                Op::User { user: u }
            }
            Kind::Expose { ports } => {
                let mut out = Vec::new();
                for w in ports {
                    let v = self.expand(w, &lookup)?;
                    for p in v.split_whitespace() {
                        check_port(p).map_err(|e| self.err(ErrorKind::Syntax(e), w.pos))?;
                        out.push(p.to_string());
                    }
                }
                Op::Expose { ports: out }
            }
            Kind::Volume { paths } => {
                let mut out = Vec::new();
                for w in paths {
                    out.push(self.expand(w, &lookup)?);
                }
                Op::Volume { paths: out }
            }
            Kind::Cmd { command } => Op::Cmd {
                command: command.to_owned_command(),
                shell: shell_for(command, &state.shell),
            },
            Kind::Entrypoint { command } => Op::Entrypoint {
                command: command.to_owned_command(),
                shell: shell_for(command, &state.shell),
            },
            Kind::Shell { shell } => {
                state.shell = shell.clone();
                Op::Shell {
                    shell: shell.clone(),
                }
            }
            Kind::Healthcheck { check } => Op::Healthcheck {
                shell: check
                    .as_ref()
                    .and_then(|c| shell_for(&c.command, &state.shell)),
                check: check.as_deref().cloned(),
            },
            Kind::Stopsignal { signal } => Op::Stopsignal {
                signal: self.expand(signal, &lookup)?,
            },
            Kind::Onbuild { trigger } => Op::Onbuild {
                trigger: trigger_text(trigger),
            },
            Kind::Maintainer { name } => Op::Maintainer { name: name.clone() },
            Kind::From(_) => return Ok(Progress::Done(None)),
        };
        Ok(Progress::Done(Some(Step {
            pos: ins.pos,
            instruction: if self.keep_steps {
                ins.text.to_string()
            } else {
                String::new()
            },
            op,
            onbuild,
        })))
    }

    /// ARG needs no other stage, so it updates the scope as it goes.
    fn arg(
        &mut self,
        decls: &[ast::ArgDecl],
        state: &StageState,
        args: &mut BTreeMap<String, String>,
        pass: &Pass,
    ) -> Result<(), Error> {
        for d in decls {
            let value = if let Some(v) = self.opts.build_args.get(&d.name) {
                self.consumed.insert(d.name.clone());
                Some(v.clone())
            } else if let Some(def) = &d.default {
                // Unlike ENV, each default sees the ARGs declared before it in the
                // same instruction (BuildKit's dispatchArg updates state per arg).
                let (env, a) = (&state.env, &*args);
                let seq = |n: &str| a.get(n).or_else(|| env.get(n)).cloned();
                Some(
                    expand_word(def, &seq, self.esc)
                        .map_err(|e| self.err(ErrorKind::Expansion(e), d.pos))?,
                )
            } else if let Some(v) = pass.auto.get(&d.name) {
                Some(v.clone())
            } else if self.st.global_names.contains(d.name.as_str()) {
                pass.meta.get(&d.name).cloned()
            } else {
                None
            };
            if let Some(v) = value {
                args.insert(d.name.clone(), v);
            }
        }
        Ok(())
    }

    fn mount(
        &self,
        m: &ast::Mount,
        workdir: Option<&str>,
        lookup: &dyn Fn(&str) -> Option<String>,
        pass: &Pass,
    ) -> Result<Progress<PlannedMount>, Error> {
        // Written with variables: parse again now, every value expanded in the stage's scope.
        let expanded;
        let pre_expanded = m.deferred;
        let m = if m.deferred {
            let x = |v: &str| expand_word(v, &lookup, self.esc);
            let mut e = crate::parse::parse_mount(&m.raw, Some(&x)).map_err(|(msg, help)| {
                let e = self.err(ErrorKind::InvalidMount(msg), m.pos);
                match help {
                    Some(h) => e.with_help(h),
                    None => e,
                }
            })?;
            e.pos = m.pos;
            expanded = e;
            &expanded
        } else {
            m
        };
        let x = |v: &Option<String>| -> Result<Option<String>, Error> {
            match v {
                Some(raw) if !pre_expanded => self
                    .expand(
                        &Word {
                            raw: raw.clone(),
                            pos: m.pos,
                        },
                        lookup,
                    )
                    .map(Some),
                other => Ok(other.clone()),
            }
        };
        // mode is octal, uid and gid decimal, as BuildKit reads them.
        let num = |v: &Option<String>, radix: u32, what: &str| -> Result<Option<u32>, Error> {
            let Some(v) = x(v)? else { return Ok(None) };
            u32::from_str_radix(&v, radix).map(Some).map_err(|_| {
                self.err(
                    ErrorKind::InvalidMount(format!("invalid value {v} for {what}")),
                    m.pos,
                )
                .with_help(if radix == 8 {
                    "give an octal mode such as 0400"
                } else {
                    "give a number such as 1000"
                })
            })
        };
        let kind = m.kind.unwrap_or(MountType::Bind);
        let from = match x(&m.from)? {
            Some(v) => match self.origin(&v, m.pos, pass)? {
                Progress::Done(o) => Some(o),
                Progress::Need(n) => return Ok(Progress::Need(n)),
            },
            None => None,
        };
        let mut id = x(&m.id)?;
        let mut target = x(&m.target)?;
        let mut source = x(&m.source)?;
        match kind {
            MountType::Secret => {
                // For secrets `source` is another spelling of the id.
                if id.is_none() {
                    id = source.take().or_else(|| target.as_deref().map(basename));
                }
                let Some(sid) = id.clone() else {
                    return Err(self
                        .err(
                            ErrorKind::InvalidMount(
                                "a secret mount needs an id or a target".into(),
                            ),
                            m.pos,
                        )
                        .with_help("add id=<secret id>"));
                };
                target.get_or_insert_with(|| format!("/run/secrets/{sid}"));
            }
            MountType::Ssh => {
                id.get_or_insert_with(|| "default".into());
                target.get_or_insert_with(|| "/run/buildkit/ssh_agent.0".into());
            }
            MountType::Cache => {
                if id.is_none() {
                    id = target.clone();
                }
            }
            MountType::Bind | MountType::Tmpfs => {}
        }
        // An empty or relative target is relative to the working directory, as in BuildKit.
        let target = match (target, workdir) {
            (Some(t), _) if t.starts_with('/') => t,
            (t, Some(w)) => resolve_workdir(Some(w), t.as_deref().unwrap_or(".")),
            (t, None) => t.unwrap_or_default(),
        };
        let sharing = match kind {
            MountType::Cache => Some(x(&m.sharing)?.unwrap_or_else(|| "shared".into())),
            _ => x(&m.sharing)?,
        };
        Ok(Progress::Done(PlannedMount {
            kind,
            target,
            source,
            from,
            id,
            sharing,
            mode: num(&m.mode, 8, "mode")?,
            uid: num(&m.uid, 10, "uid")?,
            gid: num(&m.gid, 10, "gid")?,
            // Bind, secret and ssh mounts are read-only unless asked otherwise.
            readonly: m
                .readonly
                .unwrap_or(!matches!(kind, MountType::Cache | MountType::Tmpfs)),
            required: m.required.unwrap_or(false),
            env: x(&m.env)?,
            size: x(&m.size)?,
        }))
    }
}

fn is_url(p: &str) -> bool {
    p.starts_with("http://") || p.starts_with("https://")
}

fn is_git(p: &str) -> bool {
    p.starts_with("git@")
        || p.starts_with("git://")
        || p.ends_with(".git")
        || p.contains(".git#")
        || p.starts_with("ssh://")
}

/// BuildKit's EXPOSE parsing: `[ip:][host[-host]:]port[-port][/proto]` with ports in 1..=65535.
fn check_port(raw: &str) -> Result<(), String> {
    let (rest, proto) = match raw.rsplit_once('/') {
        Some((r, p)) => (r, p),
        None => (raw, "tcp"),
    };
    if proto.is_empty() {
        return Err(format!(
            "invalid port: {raw:?}: no port specified: {rest}/<empty>"
        ));
    }
    let container = rest.rsplit(':').next().unwrap_or(rest);
    let range = |s: &str| -> bool {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) => (1..=65535).contains(&a) && (1..=65535).contains(&b) && a <= b,
            _ => false,
        }
    };
    if container.is_empty() || !range(container) {
        return Err(format!("invalid containerPort: {container}"));
    }
    Ok(())
}

/// The reason alone: our message already names the value.
fn reason(e: oci::Error) -> String {
    match e {
        oci::Error::InvalidPlatform { reason, .. }
        | oci::Error::InvalidReference { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Parses a base image's ONBUILD triggers. Errors name the image, since the text is not in the
/// Dockerfile.
fn parse_triggers(reference: &str, triggers: &[String]) -> Result<Vec<Instruction>, Error> {
    let mut out = Vec::new();
    for t in triggers {
        let file = format!("ONBUILD trigger of {reference}");
        let df = crate::parse(&format!("FROM scratch\n{t}\n"), &file)?;
        for ins in df.instructions.into_iter().skip(1) {
            if matches!(ins.kind, Kind::From(_)) {
                return Err(df_error(
                    &file,
                    &ins,
                    "FROM isn't allowed as an ONBUILD trigger",
                ));
            }
            out.push(ins);
        }
    }
    Ok(out)
}

fn df_error(file: &str, ins: &Instruction, msg: &str) -> Error {
    Error::new(
        ErrorKind::Syntax(msg.to_string()),
        Some(crate::error::Location {
            file: file.to_string(),
            pos: ins.pos,
            source_line: ins.text.to_string(),
        }),
    )
}

/// An ONBUILD trigger as the image config stores it: its line, then any here-document bodies.
fn trigger_text(ins: &Instruction) -> String {
    let mut docs: Vec<&ast::Heredoc> = Vec::new();
    match &ins.kind {
        Kind::Run(r) => docs.extend(r.heredocs.iter()),
        Kind::Copy(c) | Kind::Add(c) => docs.extend(c.sources.iter().filter_map(|s| match s {
            Source::Heredoc(h) => Some(h),
            Source::Path(_) => None,
        })),
        _ => {}
    }
    let mut text = ins.text.to_string();
    for h in docs {
        text.push('\n');
        text.push_str(&h.content);
        text.push_str(&h.delimiter);
    }
    text
}

fn basename(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn shell_for<S>(command: &Command<S>, shell: &[String]) -> Option<Vec<String>> {
    matches!(command, Command::Shell(_)).then(|| shell.to_vec())
}

fn default_shell(p: &Platform) -> Vec<String> {
    if p.os == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    }
}

/// WORKDIR: absolute paths replace, relative ones join the current directory (when known).
fn resolve_workdir(current: Option<&str>, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        match current {
            Some(c) => format!("{}/{}", c.trim_end_matches('/'), path),
            None => return path.to_string(),
        }
    };
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn opts() -> PlanOptions {
        PlanOptions {
            target: None,
            platforms: vec![
                Platform::new("linux", "amd64", ""),
                Platform::new("linux", "arm64", ""),
            ],
            build_platform: Platform::new("linux", "amd64", ""),
            build_args: BTreeMap::new(),
            base_configs: BTreeMap::new(),
            contexts: BTreeMap::new(),
        }
    }

    fn plan_of(src: &str, o: &PlanOptions) -> BuildPlan {
        let df = parse(src, "Dockerfile").expect("parses");
        plan(&df, o).expect("plans")
    }

    /// Keys of the instances of stage `index`, one per platform.
    fn keys(p: &BuildPlan, index: usize) -> Vec<String> {
        p.platforms
            .iter()
            .flat_map(|pp| pp.stages.iter())
            .filter(|k| p.stage(k).is_some_and(|s| s.body.stage.index == index))
            .cloned()
            .collect()
    }

    fn run_args(p: &BuildPlan, key: &str) -> BTreeMap<String, String> {
        let s = p.stage(key).expect("instance");
        s.body
            .steps
            .iter()
            .find_map(|st| match &st.op {
                Op::Run { args, .. } => Some(args.clone()),
                _ => None,
            })
            .expect("a RUN step")
    }

    #[test]
    fn build_platform_stage_is_shared_unless_it_reads_target_args() {
        let shared = "FROM --platform=$BUILDPLATFORM golang AS b\nRUN make\nFROM alpine\nCOPY --from=b /x /x\n";
        let p = plan_of(shared, &opts());
        let k = keys(&p, 0);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0], k[1], "one builder instance for both platforms");
        assert_eq!(p.stages.len(), 3);
        let finals = keys(&p, 1);
        assert_ne!(finals[0], finals[1]);

        let per_target = "FROM --platform=$BUILDPLATFORM golang AS b\nARG TARGETARCH\nRUN make\nFROM alpine\nCOPY --from=b /x /x\n";
        let p = plan_of(per_target, &opts());
        let k = keys(&p, 0);
        assert_ne!(k[0], k[1]);
        assert_eq!(
            run_args(&p, &k[1]).get("TARGETARCH").map(String::as_str),
            Some("arm64")
        );
        let builder = p.stage(&k[1]).expect("instance");
        assert_eq!(
            builder.body.platform.architecture, "amd64",
            "still runs on the build platform"
        );
    }

    #[test]
    fn only_needed_stages_are_planned() {
        let src = "FROM alpine AS unused\nRUN x\nFROM alpine AS dep\nRUN y\nFROM alpine AS t\nCOPY --from=dep / /\nFROM alpine AS last\n";
        let mut o = opts();
        o.target = Some("T".into());
        let p = plan_of(src, &o);
        let indexes: BTreeSet<usize> = p.stages.iter().map(|s| s.body.stage.index).collect();
        assert_eq!(indexes.into_iter().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(p.target.name.as_deref(), Some("t"));
    }

    #[test]
    fn arg_scoping_follows_buildkit() {
        let src = "ARG V=global\nARG ONLYGLOBAL=g\nFROM alpine:$V\nRUN a\nARG V\nARG ONLYSTAGE=d\nRUN b\n";
        let mut o = opts();
        o.platforms.truncate(1);
        let p = plan_of(src, &o);
        let s = &p.stages[0];
        assert_eq!(
            s.body.base,
            Base::Image {
                reference: "docker.io/library/alpine:global".into()
            }
        );
        let runs: Vec<&BTreeMap<String, String>> = s
            .body
            .steps
            .iter()
            .filter_map(|st| match &st.op {
                Op::Run { args, .. } => Some(args),
                _ => None,
            })
            .collect();
        assert!(
            runs[0].is_empty(),
            "global ARGs are not visible until redeclared"
        );
        assert_eq!(runs[1].get("V").map(String::as_str), Some("global"));
        assert_eq!(runs[1].get("ONLYSTAGE").map(String::as_str), Some("d"));
        assert!(!runs[1].contains_key("ONLYGLOBAL"));

        o.build_args.insert("V".into(), "override".into());
        o.build_args.insert("ONLYSTAGE".into(), "cli".into());
        o.build_args.insert("NOBODY".into(), "x".into());
        o.build_args.insert("HTTPS_PROXY".into(), "http://p".into());
        let p = plan_of(src, &o);
        assert_eq!(
            p.stages[0].body.base,
            Base::Image {
                reference: "docker.io/library/alpine:override".into()
            }
        );
        let args = run_args(&p, &p.stages[0].key);
        assert!(args.is_empty());
        assert_eq!(p.warnings, ["build-arg NOBODY was not consumed by any ARG"]);
    }

    #[test]
    fn build_args_override_platform_args() {
        let src = "FROM alpine:$TARGETARCH\nARG TARGETARCH\nRUN x\n";
        let mut o = opts();
        o.platforms.truncate(1);
        o.build_args.insert("TARGETARCH".into(), "custom".into());
        let p = plan_of(src, &o);
        let s = &p.stages[0];
        assert_eq!(
            s.body.base,
            Base::Image {
                reference: "docker.io/library/alpine:custom".into()
            }
        );
        assert_eq!(
            run_args(&p, &s.key).get("TARGETARCH").map(String::as_str),
            Some("custom")
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn later_of_env_and_arg_wins() {
        let src = "FROM a\nARG X=arg\nENV X=env\nENV Y=env\nARG Y=arg\nWORKDIR /$X/$Y\n";
        let mut o = opts();
        o.platforms.truncate(1);
        let p = plan_of(src, &o);
        match &p.stages[0].body.steps.last().map(|s| &s.op) {
            Some(Op::Workdir { path }) => assert_eq!(path, "/env/arg"),
            other => panic!("WORKDIR expected, got {other:?}"),
        }
    }

    #[test]
    fn base_config_feeds_env_workdir_user_and_onbuild() {
        let src = "FROM python:3.12\nENV PATH=/venv/bin:$PATH\nRUN x\nCOPY y rel/\n";
        let mut o = opts();
        o.platforms.truncate(1);
        o.base_configs.insert(
            ("docker.io/library/python:3.12".into(), "linux/amd64".into()),
            BaseConfig {
                env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
                working_dir: Some("/srv".into()),
                user: Some("app".into()),
                shell: vec!["/bin/bash".into(), "-c".into()],
                on_build: vec!["ARG GREETING=hi".into(), "RUN echo $GREETING".into()],
            },
        );
        let p = plan_of(src, &o);
        let steps = &p.stages[0].body.steps;
        assert!(steps[0].onbuild && !steps[1].onbuild);
        match &steps[0].op {
            Op::Run {
                command,
                args,
                workdir,
                user,
                shell,
                ..
            } => {
                assert_eq!(command, &Command::Shell("echo $GREETING".into()));
                assert_eq!(args.get("GREETING").map(String::as_str), Some("hi"));
                assert_eq!(workdir.as_deref(), Some("/srv"));
                assert_eq!(user.as_deref(), Some("app"));
                assert_eq!(shell, &["/bin/bash", "-c"]);
            }
            other => panic!("trigger RUN expected, got {other:?}"),
        }
        match &steps[1].op {
            Op::Env { vars } => assert_eq!(vars[0].value, "/venv/bin:/usr/bin:/bin"),
            other => panic!("ENV expected, got {other:?}"),
        }
        let bad = PlanOptions {
            base_configs: BTreeMap::from([(
                (
                    "docker.io/library/python:3.12".to_string(),
                    "linux/amd64".to_string(),
                ),
                BaseConfig {
                    on_build: vec!["RUNN x".into()],
                    ..Default::default()
                },
            )]),
            ..o
        };
        let df = parse(src, "Dockerfile").expect("parses");
        let e = plan(&df, &bad).expect_err("bad trigger");
        assert!(
            e.to_string().starts_with(
                "ONBUILD trigger of docker.io/library/python:3.12:2:1: unknown instruction"
            ),
            "{e}"
        );
    }

    #[test]
    fn option_errors_have_no_location_but_say_what_exists() {
        let df = parse("FROM a AS build\nFROM b AS release\n", "Dockerfile").expect("parses");
        let mut o = opts();
        o.target = Some("relase".into());
        let e = plan(&df, &o).expect_err("unknown target");
        assert!(e.location.is_none());
        assert_eq!(e.to_string(), "target stage \"relase\" not found\nhelp: did you mean \"release\"? stages: build, release");
        o.target = None;
        o.platforms.clear();
        assert_eq!(
            plan(&df, &o).expect_err("no platforms").kind,
            ErrorKind::NoPlatforms
        );
    }

    #[test]
    fn workdir_resolution() {
        assert_eq!(resolve_workdir(None, "/app"), "/app");
        assert_eq!(resolve_workdir(Some("/app"), "src"), "/app/src");
        assert_eq!(resolve_workdir(Some("/app"), "../x/./y"), "/x/y");
        assert_eq!(resolve_workdir(None, "rel"), "rel");
    }
}
