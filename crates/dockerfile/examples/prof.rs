fn main() {
    use manifold_dockerfile::ast::*;
    eprintln!(
        "Instruction {} Kind {} Copy {} Run {} Mount {} Word {}",
        std::mem::size_of::<Instruction>(),
        std::mem::size_of::<Kind>(),
        std::mem::size_of::<Copy>(),
        std::mem::size_of::<Run>(),
        std::mem::size_of::<Mount>(),
        std::mem::size_of::<Word>()
    );
}
