//! `chv-remote`: drive a running chv through its REST API socket, in the
//! style of Cloud Hypervisor's `ch-remote`.
//!
//! Prints the response body (JSON) on success; on an error status prints
//! the server's message on stderr and exits 1.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

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
    /// Add a virtio-fs share: `tag=T,socket=PATH[,num_queues=N,queue_size=N,id=X,pci_segment=N]`.
    AddFs { fs: String },
    /// Add a virtio-pmem device: `file=PATH[,size=SIZE,discard_writes=on,id=X,pci_segment=N]`.
    AddPmem { pmem: String },
    /// Add a VFIO device: `path=/sys/bus/pci/devices/…[,id=X,pci_segment=N]`.
    AddDevice { device: String },
    /// Add a vfio-user device: `socket=PATH[,id=X,pci_segment=N]`.
    AddUserDevice { device: String },
    /// Add a vDPA device: `path=/dev/vhost-vdpa-N[,num_queues=N,id=X,pci_segment=N]`.
    AddVdpa { vdpa: String },
    /// Remove the device with this id.
    RemoveDevice { id: String },
    /// Change the vCPU count, the RAM or the balloon (sizes take K/M/G/T).
    Resize {
        /// Target vCPU count.
        #[arg(long)]
        cpus: Option<u32>,
        /// Target guest RAM.
        #[arg(long)]
        memory: Option<String>,
        /// Target balloon size.
        #[arg(long)]
        balloon: Option<String>,
    },
    /// Resize a memory zone.
    ResizeZone {
        /// The zone's id.
        #[arg(long)]
        id: String,
        /// Its new size (K/M/G/T).
        #[arg(long)]
        size: String,
    },
    /// Resize a disk.
    ResizeDisk {
        /// The disk's id.
        #[arg(long, alias = "id")]
        disk: String,
        /// Its new size (K/M/G/T).
        #[arg(long)]
        size: String,
    },
    /// Snapshot the paused VM into a directory: `file:///path`.
    Snapshot { destination_url: String },
    /// Write a guest core dump: `file:///path`.
    Coredump { destination_url: String },
    /// Inject an NMI.
    Nmi,
    /// Restore a snapshot: `source_url=file:///path[,prefault=on][,resume=true]
    /// [,memory_restore_mode=copy|ondemand][,net_fds=[id@[fd,…],…]]` (the
    /// `net_fds` fds are this process's, sent as SCM_RIGHTS).
    Restore { restore: String },
    /// Migrate the VM: `destination_url=unix:/path[,downtime_ms=N,timeout_s=N,
    /// timeout_strategy=Cancel|Ignore,local=on]` (a bare URL works too).
    SendMigration { destination_url: String },
    /// Wait for a migrating VM: `receiver_url=unix:/path` (or the bare URL).
    ReceiveMigration { receiver_url: String },
    /// Stop the VMM process.
    ShutdownVmm,
}

/// `vm.restore`'s body from ch-remote's `restore` syntax
/// (`source_url=…[,prefault=on][,resume=true][,memory_restore_mode=…]`
/// `[,net_fds=[id@[fd,…],…]]`), and the fds of this process that
/// `net_fds` names, in order: they travel as SCM_RIGHTS with the request
/// and the body says only how many each device takes (`{id, num_fds}`), as
/// Cloud Hypervisor's ch-remote does.
fn restore_request(option: &str) -> Result<(String, Vec<RawFd>), String> {
    let items = vmm::cli::split_options(option).map_err(|e| format!("restore: {e}"))?;
    let mut body = serde_json::Map::new();
    let mut fds = Vec::new();
    for item in items {
        let value = item.value.clone().unwrap_or_default();
        let json = match item.key.as_str() {
            "source_url" => serde_json::Value::from(value),
            "prefault" | "resume" => {
                serde_json::Value::from(matches!(value.as_str(), "on" | "true"))
            }
            "memory_restore_mode" => serde_json::Value::from(match value.as_str() {
                "copy" | "Copy" => "Copy",
                "ondemand" | "OnDemand" => "OnDemand",
                other => other,
            }),
            "net_fds" => {
                let nets = parse_net_fds(&value)?;
                let mut entries = Vec::new();
                for (id, net) in nets {
                    entries.push(serde_json::json!({
                        "id": id,
                        "num_fds": net.len(),
                        "fds": null,
                    }));
                    fds.extend(net);
                }
                serde_json::Value::from(entries)
            }
            _ => {
                return Err(format!(
                    "restore: unknown option {:?} (expected source_url, prefault, resume, \
                     memory_restore_mode, net_fds)",
                    item.key
                ))
            }
        };
        body.insert(item.key, json);
    }
    if !body.contains_key("source_url") {
        return Err("restore: missing source_url=".into());
    }
    Ok((serde_json::Value::Object(body).to_string(), fds))
}

/// ch-remote's `net_fds=[id@[fd,…],…]` (parsed as `--restore` parses it):
/// each device id with the fds of this process it takes, each fd checked
/// to be open and each id named once.
fn parse_net_fds(value: &str) -> Result<Vec<(String, Vec<RawFd>)>, String> {
    let bad = |why: &str| format!("restore: net_fds={value:?}: {why}");
    let parsed = vmm::cli::parse_net_fds(value).map_err(|e| format!("restore: {e}"))?;
    let mut nets: Vec<(String, Vec<RawFd>)> = Vec::new();
    for net in parsed {
        if nets.iter().any(|(seen, _)| *seen == net.id) {
            return Err(bad(&format!("device {:?} named twice", net.id)));
        }
        let fds = net.fds.unwrap_or_default();
        for &fd in &fds {
            // SAFETY: F_GETFD only queries the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(bad(&format!(
                    "fd {fd} is not open in chv-remote: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        nets.push((net.id, fds));
    }
    Ok(nets)
}

/// How one `key=value` of a ch-remote option string goes into JSON.
#[derive(Clone, Copy)]
enum Kind {
    /// A JSON string.
    Str,
    /// A JSON number.
    Num,
    /// A byte size with an optional K/M/G/T suffix, as a number.
    Size,
    /// `on`/`off`/`true`/`false`, as a JSON bool.
    Bool,
}

/// Builds a JSON object from ch-remote's `key=value,…` syntax: `keys` lists
/// the keys `command` takes and how each is encoded; `required` must be
/// present.
fn keyed_body(
    command: &str,
    arg: &str,
    keys: &[(&str, Kind)],
    required: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let items = vmm::cli::split_options(arg).map_err(|e| format!("{command}: {e}"))?;
    let mut body = serde_json::Map::new();
    for item in items {
        let Some(&(_, kind)) = keys.iter().find(|(k, _)| *k == item.key) else {
            let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "{command}: unknown option {:?} (expected {})",
                item.key,
                names.join(", ")
            ));
        };
        let value = item.value.unwrap_or_default();
        let bad = |why: &str| format!("{command}: {}={value:?}: {why}", item.key);
        let json = match kind {
            Kind::Str => serde_json::Value::from(value.as_str()),
            Kind::Num => {
                serde_json::Value::from(value.parse::<u64>().map_err(|_| bad("not a number"))?)
            }
            Kind::Size => serde_json::Value::from(
                vmm::cli::parse_size(&value).map_err(|e| bad(&e.to_string()))?,
            ),
            Kind::Bool => serde_json::Value::from(match value.as_str() {
                "on" | "true" | "" => true,
                "off" | "false" => false,
                _ => return Err(bad("expected on or off")),
            }),
        };
        body.insert(item.key, json);
    }
    if !body.contains_key(required) {
        return Err(format!("{command}: missing {required}="));
    }
    Ok(body)
}

/// The keys every PCI device of Cloud Hypervisor takes.
const PCI_KEYS: [(&str, Kind); 3] = [
    ("id", Kind::Str),
    ("pci_segment", Kind::Num),
    ("iommu", Kind::Bool),
];

/// A `vm.add-*` body: the device's own keys plus the PCI ones.
fn device_body(
    command: &str,
    arg: &str,
    own: &[(&str, Kind)],
    required: &str,
) -> Result<String, String> {
    let keys: Vec<(&str, Kind)> = own.iter().chain(PCI_KEYS.iter()).copied().collect();
    Ok(serde_json::Value::Object(keyed_body(command, arg, &keys, required)?).to_string())
}

/// `vm.send-migration`'s body from ch-remote's `destination_url=…,
/// downtime_ms=…,…` syntax (a bare URL is accepted too).
fn send_migration_body(arg: &str) -> Result<String, String> {
    if !arg.contains('=') {
        return Ok(serde_json::json!({ "destination_url": arg }).to_string());
    }
    let keys = [
        ("destination_url", Kind::Str),
        ("local", Kind::Bool),
        ("downtime_ms", Kind::Num),
        ("timeout_s", Kind::Num),
        ("timeout_strategy", Kind::Str),
        ("connections", Kind::Num),
        ("tls_dir", Kind::Str),
        ("memory_mode", Kind::Str),
    ];
    let body = keyed_body("send-migration", arg, &keys, "destination_url")?;
    Ok(serde_json::Value::Object(body).to_string())
}

/// A byte size argument (`--memory 1G`).
fn size_arg(flag: &str, text: &str) -> Result<u64, String> {
    vmm::cli::parse_size(text).map_err(|e| format!("{flag} {text:?}: {e}"))
}

/// Sends one request and returns (status, body).
fn request(
    socket: &str,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
    fds: &[RawFd],
) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("--api-socket: cannot connect to {socket}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    // As Cloud Hypervisor's client: the request line and the first headers
    // carry the fds (SCM_RIGHTS), the rest follows in plain writes.
    let head =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    let rest = format!(
        "Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let sent = stream
        .send_with_fds(&[head.as_bytes()], fds)
        .map_err(|e| format!("sending request: {e}"))?;
    stream
        .write_all(&head.as_bytes()[sent..])
        .and_then(|()| stream.write_all(rest.as_bytes()))
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
    let put =
        |endpoint: &str, body: Option<String>| request(s, "PUT", endpoint, body.as_deref(), &[]);
    let (status, body) = match args.command {
        Command::Ping => request(s, "GET", "vmm.ping", None, &[])?,
        Command::Info => request(s, "GET", "vm.info", None, &[])?,
        Command::Counters => request(s, "GET", "vm.counters", None, &[])?,
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
            let mut cfg = vmm::cli::parse_net_option(&net).map_err(|e| e.to_string())?;
            // `fd=[…]` names fds of this process: they travel as SCM_RIGHTS,
            // not as numbers in the JSON (as ch-remote does).
            let fds = cfg.fds.take().unwrap_or_default();
            let body = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
            request(s, "PUT", "vm.add-net", Some(&body), &fds)?
        }
        Command::AddVsock { vsock } => {
            let cfg = vmm::cli::parse_vsock_option(&vsock).map_err(|e| e.to_string())?;
            put(
                "vm.add-vsock",
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
        Command::Restore { restore } => {
            let (body, fds) = restore_request(&restore)?;
            request(s, "PUT", "vm.restore", Some(&body), &fds)?
        }
        Command::SendMigration { destination_url } => put(
            "vm.send-migration",
            Some(send_migration_body(&destination_url)?),
        )?,
        Command::ReceiveMigration { receiver_url } => put(
            "vm.receive-migration",
            Some(
                serde_json::json!({
                    "receiver_url": receiver_url.strip_prefix("receiver_url=").unwrap_or(&receiver_url)
                })
                .to_string(),
            ),
        )?,
        Command::Resize {
            cpus,
            memory,
            balloon,
        } => {
            let memory = memory.map(|m| size_arg("--memory", &m)).transpose()?;
            let balloon = balloon.map(|b| size_arg("--balloon", &b)).transpose()?;
            put(
                "vm.resize",
                Some(
                    serde_json::json!({
                        "desired_vcpus": cpus,
                        "desired_ram": memory,
                        "desired_balloon": balloon,
                    })
                    .to_string(),
                ),
            )?
        }
        Command::ResizeZone { id, size } => put(
            "vm.resize-zone",
            Some(
                serde_json::json!({ "id": id, "desired_ram": size_arg("--size", &size)? })
                    .to_string(),
            ),
        )?,
        Command::ResizeDisk { disk, size } => put(
            "vm.resize-disk",
            Some(
                serde_json::json!({ "id": disk, "desired_size": size_arg("--size", &size)? })
                    .to_string(),
            ),
        )?,
        Command::AddFs { fs } => put(
            "vm.add-fs",
            Some(device_body(
                "add-fs",
                &fs,
                &[
                    ("tag", Kind::Str),
                    ("socket", Kind::Str),
                    ("num_queues", Kind::Num),
                    ("queue_size", Kind::Num),
                ],
                "tag",
            )?),
        )?,
        Command::AddPmem { pmem } => put(
            "vm.add-pmem",
            Some(device_body(
                "add-pmem",
                &pmem,
                &[
                    ("file", Kind::Str),
                    ("size", Kind::Size),
                    ("discard_writes", Kind::Bool),
                ],
                "file",
            )?),
        )?,
        Command::AddDevice { device } => put(
            "vm.add-device",
            Some(device_body(
                "add-device",
                &device,
                &[("path", Kind::Str)],
                "path",
            )?),
        )?,
        Command::AddUserDevice { device } => put(
            "vm.add-user-device",
            Some(device_body(
                "add-user-device",
                &device,
                &[("socket", Kind::Str)],
                "socket",
            )?),
        )?,
        Command::AddVdpa { vdpa } => put(
            "vm.add-vdpa",
            Some(device_body(
                "add-vdpa",
                &vdpa,
                &[("path", Kind::Str), ("num_queues", Kind::Num)],
                "path",
            )?),
        )?,
        Command::Coredump { destination_url } => put(
            "vm.coredump",
            Some(serde_json::json!({ "destination_url": destination_url }).to_string()),
        )?,
        Command::Nmi => put("vm.nmi", None)?,
    };
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        // Cloud Hypervisor's error chain: a JSON array, outermost first.
        let chain: Vec<String> =
            serde_json::from_str(&body).unwrap_or_else(|_| vec![body.trim().to_string()]);
        Err(format!("{status}: {}", chain.join("\n  caused by: ")))
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
