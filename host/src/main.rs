use std::process::ExitCode;

/// A reader that closed ckpt's standard output (`ckpt ps | head -1`) has all it wanted: ckpt
/// exits 0 quietly, as ripgrep does, instead of reporting a panic of `println!`. SIGPIPE stays
/// ignored, so a closed pipe to ssh or to a compressor is still an error that ckpt handles.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
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
