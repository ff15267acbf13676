use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = nimbus_git::config::Cli::parse();
    match nimbus_git::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("nimbus-git: {err:#}");
            ExitCode::FAILURE
        }
    }
}
