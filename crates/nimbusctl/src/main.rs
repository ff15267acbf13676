use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match nimbusctl::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            eprintln!("nimbusctl: {}", nimbusctl::usage_error_line(&err));
            return ExitCode::from(2);
        }
    };
    match nimbusctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`nimbusctl … | head`) is not an error.
            if err
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("nimbusctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
