use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use probe_user::{
    bench_floor,
    cli::{Cli, Command},
    doctor,
    error::{exit_code, exit_code_for},
    exporter, trace, tui,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    if let Err(why) = cli.check() {
        eprintln!("mmapwatch: {why} (see 'mmapwatch --help')");
        return ExitCode::from(exit_code::USAGE);
    }
    if matches!(
        cli.command,
        Command::Trace(_)
            | Command::Report(_)
            | Command::Doctor(_)
            | Command::Completions { .. }
            | Command::Manpage { .. }
    ) {
        // A report piped into `head` ends quietly, as `cat`'s does: the
        // default SIGPIPE action instead of Rust's ignore-then-panic.
        // (Not for `export`, whose clients may hang up, nor `top`.)
        // SAFETY: setting a signal's disposition to its default, before
        // any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mmapwatch: cannot start the runtime: {err}");
            return ExitCode::from(exit_code::RUNTIME);
        }
    };
    let kernel = cli.kernel_paths();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::run(&kernel, args).await,
            Command::Export(args) => exporter::run(&kernel, args).await,
            Command::Top(args) => tui::run(&kernel, args).await,
            Command::Report(args) => trace::replay::run(&args),
            Command::BenchFloor => bench_floor::run().await,
            // Generated from the command-line definition itself.
            Command::Completions { shell } => {
                let mut command = Cli::command();
                clap_complete::generate(shell, &mut command, "mmapwatch", &mut std::io::stdout());
                Ok(0)
            }
            Command::Manpage { list: true, .. } => {
                for page in probe_user::man_pages::PAGES {
                    println!("{}", page.subcommand);
                }
                Ok(0)
            }
            Command::Manpage { subcommand, .. } => {
                use std::io::Write as _;
                let roff = probe_user::man_pages::render(subcommand.as_deref())?;
                std::io::stdout()
                    .write_all(&roff)
                    .map(|()| 0)
                    .map_err(|err| anyhow::anyhow!("writing the man page: {err}"))
            }
            Command::Doctor(args) => {
                let checks = doctor::checks(&kernel.btf, args.mount);
                if args.json {
                    println!("{}", doctor::render_json(&checks));
                } else {
                    print!("{}", doctor::render(&checks));
                }
                // A needed check failed: mmapwatch cannot run here.
                let failed = checks.iter().any(|c| c.status == doctor::Status::Fail);
                Ok(if failed { exit_code::KERNEL } else { 0 })
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mmapwatch: {err:#}");
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// Help and version print as clap formats them; errors become one line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(if err.use_stderr() {
            exit_code::USAGE
        } else {
            0
        });
    }
    let rendered = err.kind().as_str().map(str::to_string).unwrap_or_default();
    let text = err.to_string();
    // clap's message up to its usage block, on one line: a missing
    // argument is named on the line after "not provided:".
    let message = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.trim_start_matches("error: ");
    let message = if message.is_empty() {
        &rendered
    } else {
        message
    };
    eprintln!("mmapwatch: {message} (see 'mmapwatch --help')");
    ExitCode::from(exit_code::USAGE)
}
