use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10000);
    let mut s = String::from("FROM alpine AS s0\n");
    for i in 1..n {
        s.push_str(&format!("FROM s{} AS s{i}\nRUN echo hi\n", i - 1));
    }
    let t = Instant::now();
    let df = manifold_dockerfile::parse(&s, "D").unwrap();
    eprintln!("parse {:?}", t.elapsed());
    let t = Instant::now();
    manifold_dockerfile::plan::validate(&df, &Default::default()).unwrap();
    eprintln!("validate {:?}", t.elapsed());
    let t = Instant::now();
    manifold_dockerfile::lint(&df);
    eprintln!("lint {:?}", t.elapsed());
}
