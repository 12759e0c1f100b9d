//! `portcullis-audit`: verify an audit log, or make a signing key (see
//! [`portcullis_audit::cli`]).

fn main() -> std::process::ExitCode {
    portcullis_audit::cli::main(std::env::args().skip(1).collect())
}
