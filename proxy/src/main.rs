//! The `bearing` binary.

fn main() {
    std::process::exit(bearing::cli::main());
}
