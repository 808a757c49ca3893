//! The `effnet` command-line tool.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("effnet: error: {e}");
            ExitCode::FAILURE
        }
    }
}
