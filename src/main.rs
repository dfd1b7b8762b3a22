//! `cargo model-export`: parse the command line, run the library, map errors to exit codes.

use std::io::Write;
use std::process::ExitCode;

use anstyle::{AnsiColor, Style};
use clap::Parser;
use model_export::cli::{Cli, Color, MessageFormat, normalize_args};
use model_export::monitor::{self, ColorChoice, MonitorSettings};

fn main() -> ExitCode {
    // Like other CLI tools, end quietly when stdout is closed early (`| head`), not with a panic.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap's help and version are successes; every other parse error is bad usage.
            return if e.use_stderr() {
                ExitCode::from(model_export::error::EXIT_USAGE as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let color = match cli.global.color {
        Color::Auto => ColorChoice::Auto,
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
    };
    monitor::init(MonitorSettings {
        verbosity: cli.global.verbose.min(10) as i8 - cli.global.quiet.min(10) as i8,
        json: cli.global.message_format == MessageFormat::Json,
        color,
    });
    match model_export::commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            if cli.global.message_format == MessageFormat::Json {
                let message = serde_json::json!({
                    "reason": "error",
                    "message": error.to_string(),
                    "help": error.help(),
                    "exit_code": code,
                });
                println!("{message}");
            } else {
                let mut stderr = anstream::AutoStream::new(
                    std::io::stderr(),
                    match color {
                        ColorChoice::Auto => anstream::ColorChoice::Auto,
                        ColorChoice::Always => anstream::ColorChoice::Always,
                        ColorChoice::Never => anstream::ColorChoice::Never,
                    },
                );
                let red = Style::new().fg_color(Some(AnsiColor::Red.into())).bold();
                let cyan = Style::new().fg_color(Some(AnsiColor::Cyan.into())).bold();
                let _ =
                    writeln!(stderr, "{red}error{red:#}: {error}\n  {cyan}help{cyan:#}: {}", error.help());
            }
            ExitCode::from(code as u8)
        }
    }
}
