//! The `philotes` command line.
fn main() {}
