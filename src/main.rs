//! The `wharf` binary: parses arguments, sets up logging, runs the command, and maps
//! errors to exit codes (0 success, 1 a reported failure, 2 usage, 3 agent unreachable).

use std::process::ExitCode;

use clap::Parser;
use wharf::cli::{Cli, Command, ImageCommand, SystemCommand};
use wharf::images::commands as images;

fn main() -> ExitCode {
    // The shim must stay single-threaded (it forks): no tokio, no logging threads. It
    // runs at every start and restart, so the agent's exact `shim --bundle DIR` is taken
    // without clap, whose building of the whole command tree is a measured 0.5 ms of it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, shim, flag, bundle] = args.as_slice() {
        if shim == "shim" && flag == "--bundle" {
            return ExitCode::from(wharf::runtime::shim::main(bundle.as_ref()) as u8);
        }
    }
    let cli = Cli::parse();
    if let Command::Shim { bundle } = &cli.command {
        return ExitCode::from(wharf::runtime::shim::main(bundle) as u8);
    }
    // Single-threaded too (it forks a helper per probe).
    if let Command::Prober { state, run_dir } = cli.command {
        return ExitCode::from(wharf::health::prober_process::main(state, run_dir) as u8);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths } => {
            let diagnostics = wharf::manifest::validate_paths(&paths);
            for d in &diagnostics {
                println!("{d}");
            }
            Ok(ExitCode::from(if diagnostics.is_empty() { 0 } else { 1 }))
        }
        Command::Plan {
            path,
            state,
            run_dir,
        } => {
            use wharf::reconciler::preview::{preview, read_manifests, render, Preview};
            let runtime = wharf::runtime::LinuxRuntime::new(
                &state,
                &run_dir,
                &wharf::agent::instance_id(&state),
                std::env::current_exe()?,
            );
            let files = read_manifests(&path);
            match tokio_runtime()?.block_on(preview(&files, &runtime))? {
                Preview::Invalid(errors) => {
                    for e in errors {
                        println!("{e}");
                    }
                    Ok(ExitCode::from(1))
                }
                Preview::Steps { steps, unchanged } => {
                    print!("{}", render(&steps, &unchanged));
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Agent(args) => {
            tokio_runtime()?.block_on(wharf::agent::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(host) => client(wharf::client::status(&host.hosts)),
        Command::Volumes(host) => client(wharf::client::volumes(&host.hosts)),
        Command::Exec {
            name,
            user,
            env,
            workdir,
            state,
            run_dir,
            command,
        } => {
            // Synchronous and single-threaded, like the shim: it forks.
            let code = wharf::runtime::exec::run(&wharf::runtime::exec::ExecRequest {
                name,
                state_root: state,
                run_root: run_dir,
                args: command,
                env,
                workdir,
                user,
                exact: false,
            })?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Logs {
            name,
            tail,
            follow,
            previous,
            host,
        } => client(wharf::client::logs(
            &host.hosts,
            &name,
            wharf::client::LogOptions {
                tail,
                follow,
                previous,
            },
        )),
        Command::Inspect { name, host } => client(wharf::client::inspect(&host.hosts, &name)),
        Command::Pull { reference, store } => {
            let mut out = std::io::stdout();
            tokio_runtime()?.block_on(images::pull(&store, &reference, &mut out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { reference, store } => {
            let mut out = std::io::stdout();
            tokio_runtime()?.block_on(images::push(&store, &reference, &mut out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Images { json, store } | Command::Image(ImageCommand::Ls { json, store }) => {
            images::list(&store, json, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Tag {
            source,
            target,
            store,
        }) => {
            images::tag(&store, &source, &target)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Rm { references, store }) => {
            let failed = images::rm(
                &store,
                &references,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
            Ok(ExitCode::from(u8::from(failed > 0)))
        }
        Command::Image(ImageCommand::Prune { store }) => {
            images::prune(&store, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Import {
            rootfs,
            target,
            store,
        }) => {
            images::import(&store, rootfs.as_deref(), &target, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Export {
            reference,
            file,
            store,
        }) => {
            images::export(&store, &reference, &file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::System(SystemCommand::Reset(args)) => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            let summary =
                tokio_runtime()?.block_on(wharf::reset::run(&args, &mut out, &mut err))?;
            Ok(ExitCode::from(u8::from(summary.failed > 0)))
        }
        Command::Shim { .. } | Command::Prober { .. } => {
            unreachable!("handled before logging starts")
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn client(
    fut: impl std::future::Future<Output = Result<(), wharf::client::ClientError>>,
) -> anyhow::Result<ExitCode> {
    match tokio_runtime()?.block_on(fut) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("wharf: {e}");
            Ok(ExitCode::from(e.exit_code() as u8))
        }
    }
}
