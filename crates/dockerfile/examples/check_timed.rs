//! `--check` of one file as the CLI does it (two platforms), with the time of each phase:
//! `cargo run --release -p manifold-dockerfile --example check_timed -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("a Dockerfile path");
    let bytes = std::fs::read(&path).expect("readable");
    let t = std::time::Instant::now();
    let df = manifold_dockerfile::parse_bytes(bytes, &path).expect("parses");
    eprintln!("parse {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let n = manifold_dockerfile::lint(&df).len();
    eprintln!("lint {:?} {n}", t.elapsed());
    let t = std::time::Instant::now();
    let _ = manifold_dockerfile::plan::validate(&df, &Default::default());
    eprintln!("validate {:?}", t.elapsed());
    let opts = manifold_dockerfile::lint::CheckOptions {
        plan: manifold_dockerfile::PlanOptions {
            platforms: vec![
                oci::Platform::new("linux", "amd64", ""),
                oci::Platform::new("linux", "arm64", ""),
            ],
            build_platform: oci::Platform::new("linux", "amd64", ""),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = manifold_dockerfile::lint::check(&df, &opts);
    println!(
        "{} findings, error: {:?}",
        r.findings.len(),
        r.error.map(|e| e.to_string())
    );
}
