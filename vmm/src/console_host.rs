//! The host ends of the `Pty` and `Socket` console modes (serial and
//! virtio-console alike).
//!
//! - `Pty`: chv opens a pseudo-terminal pair; the device talks to the
//!   master and the slave's path (`/dev/pts/N`) is logged and reported in
//!   `vm.info` as the console's `file`, as Cloud Hypervisor does.
//! - `Socket`: chv listens on the Unix socket `socket=PATH`; one client at a
//!   time gets the output and its input goes to the guest. A relay thread
//!   (`console-socket`) joins the client to the device's end of a
//!   socketpair, and discards output while nobody is connected.
//!
//! The device's end is non-blocking: output that the host side does not
//! take is dropped, so a vCPU writing to the serial port never blocks.
//! Serial input (which the 16550 cannot pull itself) is fed by a
//! `serial-input` thread that waits for room in the receive FIFO.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::ConsoleInput;
use virtio_devices::worker::ThreadSetup;

use crate::config::{ConsoleConfig, ConsoleOutputMode};

/// The device's end of a `Pty` or `Socket` console.
pub struct HostConsole {
    /// Read for guest input, written with guest output (non-blocking).
    pub device_end: File,
    /// The pty slave's path (`Pty` mode).
    pub pty_path: Option<PathBuf>,
    /// A descriptor of the pty slave, held by the device's output so the
    /// master reads no EIO while no client is attached, and closed with
    /// the device (`Pty` mode).
    pty_slave: Option<File>,
}

impl HostConsole {
    /// Opens the host end `cfg` asks for; `None` for the other modes.
    /// `field` names the console in errors (`serial`, `console`).
    pub fn open(
        cfg: &ConsoleConfig,
        field: &str,
        setup: Option<ThreadSetup>,
    ) -> Result<Option<Self>, String> {
        match cfg.mode {
            ConsoleOutputMode::Pty => {
                let (master, slave, path) = open_pty().map_err(|e| format!("{field}: pty: {e}"))?;
                log::info!("{field} console on {}", path.display());
                Ok(Some(Self {
                    device_end: master,
                    pty_path: Some(path),
                    pty_slave: Some(slave),
                }))
            }
            ConsoleOutputMode::Socket => {
                let path = cfg
                    .socket
                    .as_ref()
                    .ok_or_else(|| format!("{field}.socket: Socket mode needs socket=PATH"))?;
                let listener =
                    bind(path).map_err(|e| format!("{field}.socket={}: {e}", path.display()))?;
                let (device, relay) =
                    UnixStream::pair().map_err(|e| format!("{field}: socketpair: {e}"))?;
                device
                    .set_nonblocking(true)
                    .map_err(|e| format!("{field}: {e}"))?;
                let name = format!("{field}-socket");
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        if let Some(setup) = &setup {
                            if let Err(e) = setup() {
                                log::error!("{name}: {e}");
                                return;
                            }
                        }
                        relay_socket(&listener, relay);
                    })
                    .map_err(|e| format!("{field}: cannot start the socket relay: {e}"))?;
                Ok(Some(Self {
                    device_end: File::from(OwnedFd::from(device)),
                    pty_path: None,
                    pty_slave: None,
                }))
            }
            _ => Ok(None),
        }
    }

    /// A writer for the device's output that drops what the host side
    /// does not take right away. It keeps the pty slave open as long as
    /// the device lives.
    pub fn output(&self) -> std::io::Result<Box<dyn Write + Send>> {
        let slave = match &self.pty_slave {
            Some(s) => Some(s.try_clone()?),
            None => None,
        };
        Ok(Box::new(DropWhenFull {
            out: self.device_end.try_clone()?,
            _pty_slave: slave,
        }))
    }

    /// Starts the thread that feeds host input to the serial port.
    pub fn feed_serial(
        &self,
        serial: Arc<Mutex<dyn ConsoleInput>>,
        setup: Option<ThreadSetup>,
    ) -> std::io::Result<()> {
        let input = self.device_end.try_clone()?;
        std::thread::Builder::new()
            .name("serial-input".into())
            .spawn(move || {
                if let Some(setup) = &setup {
                    if let Err(e) = setup() {
                        log::error!("serial-input: {e}");
                        return;
                    }
                }
                feed(input, &serial);
            })?;
        Ok(())
    }
}

/// Output that never blocks: bytes the peer has no room for are dropped.
struct DropWhenFull {
    out: File,
    _pty_slave: Option<File>,
}

impl Write for DropWhenFull {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.out.write(buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(buf.len()),
            // No reader (a pty nobody opened, a closed relay): drop too.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a pty pair in raw mode; returns the non-blocking master, a slave
/// descriptor and the slave's path.
fn open_pty() -> std::io::Result<(File, File, PathBuf)> {
    // SAFETY: posix_openpt takes flags only.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    // SAFETY: valid pty master descriptor.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is writable for its length.
    let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(path.to_string_lossy().into_owned());
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&path)?;
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid tty descriptor and termios pointer.
    if unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut tio) } == 0 {
        // SAFETY: `tio` is an initialized termios.
        unsafe { libc::cfmakeraw(&mut tio) };
        // SAFETY: valid tty descriptor and termios pointer.
        unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio) };
    }
    set_nonblocking(&master)?;
    Ok((master, slave, path))
}

/// `O_NOCTTY` for opening the pty slave (chv must not get a controlling
/// terminal).
trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

fn set_nonblocking(f: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `ms` for `fds` to become readable; returns their `revents`.
fn poll_in(fds: &[i32], ms: i32) -> Vec<i16> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of pollfd of the length given.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if rc <= 0 {
        return vec![0; fds.len()];
    }
    p.iter().map(|p| p.revents).collect()
}

/// Feeds bytes read from `input` into the serial port while there is room.
fn feed(mut input: File, serial: &Arc<Mutex<dyn ConsoleInput>>) {
    let mut buf = [0u8; 64];
    // Once this thread holds the last reference the VM is gone.
    while Arc::strong_count(serial) > 1 {
        let room = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_capacity()
            .min(buf.len());
        if room == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if poll_in(&[input.as_raw_fd()], 200)[0] == 0 {
            continue;
        }
        match input.read(&mut buf[..room]) {
            Ok(0) => return,
            Ok(n) => serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // A pty without a client reads EIO until one opens it.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                log::warn!("serial input stopped: {e}");
                return;
            }
        }
    }
}

/// Joins one client at a time to `relay` (the other end of the device's
/// socketpair); output is discarded while no client is connected.
fn relay_socket(listener: &UnixListener, mut relay: UnixStream) {
    let mut client: Option<UnixStream> = None;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = vec![listener.as_raw_fd(), relay.as_raw_fd()];
        if let Some(c) = &client {
            fds.push(c.as_raw_fd());
        }
        let ready = poll_in(&fds, 1000);
        if ready[0] != 0 {
            match listener.accept() {
                Ok((stream, _)) if client.is_none() => client = Some(stream),
                // One client at a time: later ones are closed at once.
                Ok(_) => {}
                Err(e) => log::warn!("console socket: accept: {e}"),
            }
        }
        if ready[1] != 0 {
            match relay.read(&mut buf) {
                Ok(0) => return, // the VM is gone
                Ok(n) => {
                    if let Some(c) = &mut client {
                        if c.write_all(&buf[..n]).is_err() {
                            client = None;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        if ready.get(2).is_some_and(|&r| r != 0) {
            if let Some(c) = &mut client {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => client = None,
                    Ok(n) => {
                        if relay.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Binds the console socket. A socket file nobody listens on (left by an
/// earlier run, or by this VM before a guest reset) is replaced; one still
/// served is waited for briefly (a previous VM's relay closing), then
/// refused.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    for _ in 0..30 {
        match UnixListener::bind(path) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                });
                if !is_socket {
                    return Err(e);
                }
                if UnixStream::connect(path).is_err() {
                    std::fs::remove_file(path)?;
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            other => return other,
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AddrInUse,
        "another process serves this socket",
    ))
}

/// The host end a console's output goes to when chv opens it itself:
/// stdout (`tty`), the file (`file=PATH`, appended to), or nothing (`off`,
/// `null`, and `pty`/`socket`, whose ends [`HostConsole`] opens). `what`
/// names the option in errors.
pub fn open_output(
    cfg: &ConsoleConfig,
    what: &str,
) -> Result<Option<Box<dyn Write + Send>>, String> {
    Ok(match cfg.mode {
        ConsoleOutputMode::Off | ConsoleOutputMode::Null => None,
        ConsoleOutputMode::Pty | ConsoleOutputMode::Socket => None,
        ConsoleOutputMode::Tty => Some(Box::new(std::io::stdout())),
        ConsoleOutputMode::File => {
            let path = cfg
                .file
                .as_ref()
                .ok_or_else(|| format!("--{what}: file mode needs a path (file=PATH)"))?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--{what}: cannot open {}: {e}", path.display()))?;
            Some(Box::new(f))
        }
    })
}
