//! `portcullis-waf`: evaluate rule packs and the leak guard against labelled corpora, and run
//! CRS's regression tests (see [`portcullis_waf::cli`]).

fn main() -> std::process::ExitCode {
    portcullis_waf::cli::main(std::env::args().skip(1).collect())
}
