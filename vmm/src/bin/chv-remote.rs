//! `chv-remote`: drive a running chv through its REST API socket, in the
//! style of Cloud Hypervisor's `ch-remote`.
//!
//! Prints the response body (JSON) on success; on an error status prints
//! the server's message on stderr and exits 1.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chv-remote",
    version,
    about = "Control a running chv through its API socket"
)]
struct Args {
    /// Path of chv's API socket (as given to `chv --api-socket`).
    #[arg(long = "api-socket", value_name = "PATH")]
    api_socket: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// VMM version and pid.
    Ping,
    /// VM configuration and state.
    Info,
    /// Create a VM from a JSON VmConfig file (`-` for stdin).
    Create { file: String },
    /// Boot the created VM.
    Boot,
    /// Pause the VM's vCPUs.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Shut the VM down (the VMM keeps running).
    Shutdown,
    /// Reboot the VM.
    Reboot,
    /// Delete the VM configuration.
    Delete,
    /// Press the VM's power button.
    PowerButton,
    /// Per-device I/O counters.
    Counters,
    /// Add a disk: `path=IMG[,readonly=on,…]` (the `--disk` syntax).
    AddDisk { disk: String },
    /// Add a network device: `tap=NAME[,mac=…,…]` (the `--net` syntax).
    AddNet { net: String },
    /// Add the vsock device: `cid=N,socket=PATH[,id=X]` (the `--vsock` syntax).
    AddVsock { vsock: String },
    /// Add a virtio-fs share: `tag=T,socket=PATH[,…]` (the `--fs` syntax).
    AddFs { fs: String },
    /// Add a pmem device: `file=PATH[,size=…,…]` (the `--pmem` syntax).
    AddPmem { pmem: String },
    /// Remove the device with this id.
    RemoveDevice { id: String },
    /// Change the number of vCPUs.
    Resize {
        #[arg(long)]
        cpus: u8,
    },
    /// Snapshot the paused VM into a directory: `file:///path`.
    Snapshot { destination_url: String },
    /// Restore a snapshot: `source_url=file:///path[,prefault=on][,resume=true]`.
    Restore { restore: String },
    /// Migrate the VM to the chv receiving at `unix:/path`.
    SendMigration { destination_url: String },
    /// Wait at `unix:/path` for a migrating VM.
    ReceiveMigration { receiver_url: String },
    /// Stop the VMM process.
    ShutdownVmm,
}

/// `vm.restore`'s body from the `--restore` option syntax.
fn restore_body(option: &str) -> Result<String, String> {
    let mut body = serde_json::Map::new();
    for item in option.split(',') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        let value = match key {
            "source_url" => serde_json::Value::from(value),
            "prefault" | "resume" => serde_json::Value::from(matches!(value, "on" | "true")),
            _ => {
                return Err(format!(
                    "restore: unknown option {key:?} (expected source_url, prefault, resume)"
                ))
            }
        };
        body.insert(key.to_string(), value);
    }
    if !body.contains_key("source_url") {
        return Err("restore: missing source_url=".into());
    }
    Ok(serde_json::Value::Object(body).to_string())
}

/// Sends one request and returns (status, body).
fn request(
    socket: &str,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("--api-socket: cannot connect to {socket}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("sending request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading response: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed response: {head:?}"))?;
    Ok((status, payload.to_string()))
}

fn run(args: Args) -> Result<String, String> {
    let s = args.api_socket.as_str();
    let put = |endpoint: &str, body: Option<String>| request(s, "PUT", endpoint, body.as_deref());
    let (status, body) = match args.command {
        Command::Ping => request(s, "GET", "vmm.ping", None)?,
        Command::Info => request(s, "GET", "vm.info", None)?,
        Command::Counters => request(s, "GET", "vm.counters", None)?,
        Command::Create { file } => {
            let text = if file == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .map_err(|e| format!("stdin: {e}"))?;
                t
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| format!("create: cannot read {file}: {e}"))?
            };
            put("vm.create", Some(text))?
        }
        Command::Boot => put("vm.boot", None)?,
        Command::Pause => put("vm.pause", None)?,
        Command::Resume => put("vm.resume", None)?,
        Command::Shutdown => put("vm.shutdown", None)?,
        Command::Reboot => put("vm.reboot", None)?,
        Command::Delete => put("vm.delete", None)?,
        Command::PowerButton => put("vm.power-button", None)?,
        Command::ShutdownVmm => put("vmm.shutdown", None)?,
        Command::AddDisk { disk } => {
            let cfg = vmm::cli::parse_disk_option(&disk).map_err(|e| e.to_string())?;
            put(
                "vm.add-disk",
                Some(serde_json::to_string(&cfg).map_err(|e| e.to_string())?),
            )?
        }
        Command::AddNet { net } => {
            let cfg = vmm::cli::parse_net_option(&net).map_err(|e| e.to_string())?;
            put(
                "vm.add-net",
                Some(serde_json::to_string(&cfg).map_err(|e| e.to_string())?),
            )?
        }
        Command::AddVsock { vsock } => {
            let cfg = vmm::cli::parse_vsock_option(&vsock).map_err(|e| e.to_string())?;
            put(
                "vm.add-vsock",
                Some(serde_json::to_string(&cfg).map_err(|e| e.to_string())?),
            )?
        }
        Command::AddFs { fs } => {
            let cfg = vmm::cli::parse_fs_option(&fs).map_err(|e| e.to_string())?;
            put(
                "vm.add-fs",
                Some(serde_json::to_string(&cfg).map_err(|e| e.to_string())?),
            )?
        }
        Command::AddPmem { pmem } => {
            let cfg = vmm::cli::parse_pmem_option(&pmem).map_err(|e| e.to_string())?;
            put(
                "vm.add-pmem",
                Some(serde_json::to_string(&cfg).map_err(|e| e.to_string())?),
            )?
        }
        Command::RemoveDevice { id } => put(
            "vm.remove-device",
            Some(serde_json::json!({ "id": id }).to_string()),
        )?,
        Command::Snapshot { destination_url } => put(
            "vm.snapshot",
            Some(serde_json::json!({ "destination_url": destination_url }).to_string()),
        )?,
        Command::Restore { restore } => put("vm.restore", Some(restore_body(&restore)?))?,
        Command::SendMigration { destination_url } => put(
            "vm.send-migration",
            Some(serde_json::json!({ "destination_url": destination_url }).to_string()),
        )?,
        Command::ReceiveMigration { receiver_url } => put(
            "vm.receive-migration",
            Some(serde_json::json!({ "receiver_url": receiver_url }).to_string()),
        )?,
        Command::Resize { cpus } => put(
            "vm.resize",
            Some(serde_json::json!({ "desired_vcpus": cpus }).to_string()),
        )?,
    };
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(format!("{status}: {}", body.trim()))
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(body) => {
            if !body.is_empty() {
                println!("{body}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chv-remote: error: {e}");
            ExitCode::FAILURE
        }
    }
}
