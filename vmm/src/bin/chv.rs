//! `chv`: boot a VM from the command line.
//!
//! Exit codes: 0 when the guest powers off or chv is stopped by SIGINT/SIGTERM,
//! 1 for bad options or anything that stops the VM with an error.

use std::io::Write;
use std::process::ExitCode;

use vmm::cli::{self, CliError};

fn init_logging(cli: &cli::Cli) -> Result<(), String> {
    let level = match cli.verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format(|buf, record| {
        writeln!(
            buf,
            "chv: {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        )
    });
    if let Some(path) = &cli.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("--log-file: cannot open {}: {e}", path.display()))?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.init();
    Ok(())
}

/// Caps glibc's malloc arenas before any thread starts. Without a cap,
/// the thread that creates the ninth arena has glibc read
/// `/sys/devices/system/cpu/online` to size the limit, and a device worker
/// whose seccomp filter has no `openat` is killed for it. Fewer arenas
/// also keep each VMM's resident memory small.
fn cap_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = match cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliError::Display(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chv: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_logging(&cli) {
        eprintln!("chv: error: {e}");
        return ExitCode::FAILURE;
    }
    std::panic::set_hook(Box::new(|info| {
        vmm::terminal::restore();
        eprintln!("chv: internal error: {info}");
    }));
    if cli.vm.is_none() && cli.api_socket.is_none() && cli.restore.is_none() {
        eprintln!("chv: error: --kernel: no payload given (give --kernel, or --api-socket to wait for vm.create)");
        return ExitCode::FAILURE;
    }
    match vmm::run(cli.vm, cli.api_socket.as_deref(), cli.seccomp, cli.restore) {
        Ok(exit) => {
            log::info!("VM ended: {exit:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chv: error: {e}");
            ExitCode::FAILURE
        }
    }
}
