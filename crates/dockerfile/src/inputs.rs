//! Everything a plan reads from outside its own steps, so a caller can make it ready before the
//! build and a cache key can name it: images (FROM, `COPY --from`, `RUN --mount from=`), the
//! stages other steps read, and paths of the build context.

use oci::Platform;

use crate::plan::{Base, BuildPlan, Op, Origin, PlannedSource};

/// One input of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanInput {
    /// An image, for the platform of the instance that reads it.
    Image {
        reference: String,
        platform: Platform,
    },
    /// A stage instance whose result another step reads.
    Stage { key: String },
    /// A path (or pattern) of the build context.
    Context { path: String },
}

impl BuildPlan {
    /// Every input, each once, in plan order.
    pub fn inputs(&self) -> Vec<PlanInput> {
        let mut out: Vec<PlanInput> = Vec::new();
        let mut add = |i: PlanInput| {
            let dup = out.iter().any(|o| match (o, &i) {
                (
                    PlanInput::Image {
                        reference: r1,
                        platform: p1,
                    },
                    PlanInput::Image {
                        reference: r2,
                        platform: p2,
                    },
                ) => r1 == r2 && p1.same_target(p2),
                (a, b) => a == b,
            });
            if !dup {
                out.push(i);
            }
        };
        for s in &self.stages {
            let platform = &s.body.platform;
            let origin = |o: &Origin, paths: Vec<String>, add: &mut dyn FnMut(PlanInput)| match o {
                Origin::Image { reference } => add(PlanInput::Image {
                    reference: reference.clone(),
                    platform: platform.clone(),
                }),
                Origin::Stage { key, .. } => add(PlanInput::Stage { key: key.clone() }),
                Origin::Context => {
                    for path in paths {
                        add(PlanInput::Context { path });
                    }
                }
            };
            match &s.body.base {
                Base::Image { reference } => add(PlanInput::Image {
                    reference: reference.clone(),
                    platform: platform.clone(),
                }),
                Base::Stage { key, .. } => add(PlanInput::Stage { key: key.clone() }),
                Base::Scratch => {}
            }
            for st in &s.body.steps {
                match &st.op {
                    Op::Copy { from, sources, .. } => origin(from, paths_of(sources), &mut add),
                    Op::Add { sources, .. } => {
                        origin(&Origin::Context, paths_of(sources), &mut add)
                    }
                    Op::Run { mounts, .. } => {
                        for m in mounts {
                            if m.kind != crate::ast::MountType::Bind {
                                continue;
                            }
                            let path = m.source.clone().unwrap_or_else(|| ".".into());
                            origin(
                                m.from.as_ref().unwrap_or(&Origin::Context),
                                vec![path],
                                &mut add,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The images the plan reads, each with the platforms it is read for.
    pub fn images(&self) -> Vec<(String, Vec<Platform>)> {
        let mut out: Vec<(String, Vec<Platform>)> = Vec::new();
        for i in self.inputs() {
            if let PlanInput::Image {
                reference,
                platform,
            } = i
            {
                match out.iter_mut().find(|(r, _)| *r == reference) {
                    Some((_, ps)) => {
                        if !ps.iter().any(|p| p.same_target(&platform)) {
                            ps.push(platform)
                        }
                    }
                    None => out.push((reference, vec![platform])),
                }
            }
        }
        out
    }
}

fn paths_of(sources: &[PlannedSource]) -> Vec<String> {
    sources
        .iter()
        .filter_map(|s| match s {
            PlannedSource::Path { path }
                if !path.starts_with("http://") && !path.starts_with("https://") =>
            {
                Some(path.clone())
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_of_from_copy_and_mounts() {
        let df = crate::parse(
            "FROM a:1 AS one\nCOPY --from=b:2 /x /x\nRUN --mount=type=bind,from=c:3,target=/c --mount=type=bind,source=f,target=/f true\nFROM scratch\nCOPY --from=one /x /x\nCOPY g /g\n",
            "Dockerfile",
        )
        .unwrap();
        let plan = crate::plan(
            &df,
            &crate::PlanOptions {
                platforms: vec![Platform::parse("linux/arm64").unwrap()],
                build_platform: Platform::parse("linux/amd64").unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
        let refs: Vec<String> = plan.images().into_iter().map(|(r, _)| r).collect();
        assert_eq!(refs.len(), 3, "{refs:?}");
        for want in ["a:1", "b:2", "c:3"] {
            assert!(refs.iter().any(|r| r.contains(want)), "{want}: {refs:?}");
        }
        let inputs = plan.inputs();
        for p in ["f", "g"] {
            assert!(
                inputs.contains(&PlanInput::Context { path: p.into() }),
                "{p}: {inputs:?}"
            );
        }
        assert!(inputs.iter().any(|i| matches!(i, PlanInput::Stage { .. })));
    }
}
