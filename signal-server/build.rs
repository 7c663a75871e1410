//! Rebuilds the server when anything under `static/` changes. The embedding
//! macro only tracks the files it embedded last time, so without this a
//! file added since (the first client build, say) would be left out of a
//! release binary.

fn main() {
    println!("cargo:rerun-if-changed=../static");
}
