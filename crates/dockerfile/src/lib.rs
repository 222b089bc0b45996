//! The Dockerfile frontend: from Dockerfile text to a typed syntax tree, with BuildKit's word
//! expansion and ARG scoping, to a per-platform build plan whose stages are shared across target
//! platforms when they do not depend on them, plus BuildKit's lint checks.
//!
//! It refuses to know about registries, stores, snapshots or running anything: base images are
//! references (strings), the build context is paths, and the build engine executes the plan.
//!
//! ```
//! use std::collections::BTreeMap;
//! use manifold_dockerfile::{lint, parse, plan, plan::Base, PlanOptions};
//! use oci::Platform;
//!
//! let text = "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n\
//!             RUN go build -o /app .\n\
//!             FROM alpine:3.19\n\
//!             COPY --from=build /app /app\n\
//!             CMD /app\n";
//! let df = parse(text, "Dockerfile").expect("valid Dockerfile");
//! let opts = PlanOptions {
//!     target: None,
//!     platforms: vec![Platform::parse("linux/amd64")?, Platform::parse("linux/arm64")?],
//!     build_platform: Platform::parse("linux/amd64")?,
//!     build_args: BTreeMap::new(),
//!     base_configs: BTreeMap::new(),
//!     contexts: BTreeMap::new(),
//! };
//! let p = plan(&df, &opts).expect("plannable");
//! // The builder does not depend on the target platform: one instance serves both.
//! assert_eq!(p.platforms[0].stages[0], p.platforms[1].stages[0]);
//! assert_eq!(p.stages.len(), 3);
//! let last = p.stage(&p.platforms[1].target).expect("target instance");
//! assert_eq!(last.body.base, Base::Image { reference: "docker.io/library/alpine:3.19".into() });
//! // CMD in shell form draws BuildKit's JSONArgsRecommended check.
//! assert_eq!(lint(&df)[0].rule, "JSONArgsRecommended");
//! # Ok::<(), oci::Error>(())
//! ```

pub mod ast;
pub mod error;
pub mod expand;
pub mod inputs;
pub mod lint;
mod parse;
pub mod plan;
pub mod values;

pub use ast::Dockerfile;
pub use error::{Error, ErrorKind, Location, Pos};
pub use inputs::PlanInput;
pub use lint::{lint, render_json, render_text, Finding};
pub use parse::{parse, parse_bytes};
pub use plan::{plan, BaseConfig, BuildPlan, PlanOptions};
