use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match ckpt::cli::Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors are ckpt's own errors (125), help and version are not.
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(ckpt::error::EXIT_CKPT_ERROR as u8),
            };
        }
    };
    match ckpt::cli::run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("Error: {}", ckpt::util::escape_controls(&e.to_string()));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
