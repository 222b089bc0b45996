//! The Dockerfile frontend: from Dockerfile text to a typed syntax tree, with BuildKit's word
//! expansion and ARG scoping, to a per-platform build plan whose stages are shared across target
//! platforms when they do not depend on them, plus BuildKit's lint checks.
//!
//! It refuses to know about registries, stores, snapshots or running anything: base images are
//! references (strings), the build context is paths, and the build engine executes the plan.

pub mod ast;
pub mod error;
pub mod expand;
mod parse;

pub use ast::Dockerfile;
pub use error::{Error, ErrorKind, Location, Pos};
pub use parse::parse;
pub mod plan;

pub use plan::{plan, BuildPlan, PlanOptions};
pub mod lint;

pub use lint::{lint, render_json, render_text, Finding};
