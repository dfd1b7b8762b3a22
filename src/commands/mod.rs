//! One module per subcommand: each calls the library and renders the result for people
//! (tables) or programs (`--message-format json`).

mod bench;
mod clean;
mod config;
mod demo;
mod detect;
mod explain;
mod generate;
mod init;
mod inspect;
mod merge;
mod output;
mod presets;
mod profiles;
mod run;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cli::{Cli, Command, MessageFormat};
use crate::config::{Config, LoadRequest, Overrides};
use crate::error::Error;

/// What every command may need besides its own arguments.
pub struct Context {
    pub json: bool,
    pub manifest_path: Option<PathBuf>,
    pub package: Option<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Context {
    pub fn from_cli(cli: &Cli) -> Result<Self, Error> {
        let cwd = std::env::current_dir().map_err(|e| Error::write(std::path::Path::new("."), e))?;
        Ok(Context {
            json: cli.global.message_format == MessageFormat::Json,
            manifest_path: cli.global.manifest_path.clone(),
            package: cli.global.package.clone(),
            cwd,
            env: crate::config::env::from_process(),
        })
    }

    pub fn load_config(&self, overrides: &Overrides) -> Result<Config, Error> {
        Ok(crate::config::load(&LoadRequest {
            manifest_path: self.manifest_path.as_deref(),
            package: self.package.as_deref(),
            overrides,
            env: &self.env,
            cwd: &self.cwd,
        })?)
    }
}

pub fn run(cli: &Cli) -> Result<(), Error> {
    crate::pipeline::install_safe_points();
    let ctx = Context::from_cli(cli)?;
    let Some(command) = &cli.command else {
        return run::run(&ctx, &Overrides::default(), run::RunFlags::default());
    };
    match command {
        Command::Config(args) => config::run(&ctx, &args.into()),
        Command::Detect(args) => detect::run(&ctx, &args.into()),
        Command::Inspect(args) => inspect::run(&ctx, args),
        Command::Merge(args) => merge::run(&ctx, args),
        Command::Run(args) => {
            let overrides = args.text.apply(Overrides {
                max_memory: args.max_memory.clone(),
                jobs: args.jobs,
                ..(&args.overrides).into()
            });
            let flags = run::RunFlags {
                skip_check: args.skip_check,
                no_validate: args.no_validate,
                dry_run: args.dry_run,
                force: args.force,
                no_fallback: args.no_fallback,
                allow_unverified: args.allow_unverified,
                verify: args.verify,
            };
            run::run(&ctx, &overrides, flags)
        }
        Command::Validate(args) => {
            validate::run(&ctx, &args.text.apply((&args.overrides).into()), args.allow_unverified)
        }
        Command::Bench(args) => bench::run(&ctx, args),
        Command::Generate(args) => generate::run(&ctx, args),
        Command::Init(args) => init::run(&ctx, args),
        Command::Explain(args) => explain::run(&ctx, args.key.as_deref()),
        Command::Presets => presets::run(&ctx),
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut command, "cargo-model-export", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map_err(|e| Error::write(std::path::Path::new("<stdout>"), e))
        }
        Command::Profiles => profiles::run(&ctx),
        Command::Demo(args) => demo::run(&ctx, args),
        Command::Clean(args) => clean::run(&ctx, args),
    }
}
