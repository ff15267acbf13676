use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nimbusd::config::Cli::parse();
    match nimbusd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nimbusd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
