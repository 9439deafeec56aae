//! The host side of virtio-net: a Linux tap interface (`/dev/net/tun`).
//!
//! Each queue pair owns one tap queue file. The tap is opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame read or written is
//! preceded by a 12-byte `virtio_net_hdr_v1`: the guest's header travels to
//! the host stack unchanged and the host's offload metadata reaches the
//! guest. Files are non-blocking; the worker polls them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Path of the tun/tap clone device.
const TUN_PATH: &str = "/dev/net/tun";

/// Size of the `virtio_net_hdr_v1` prepended to every frame.
pub const VNET_HDR_LEN: usize = 12;

/// ioctl requests issued on tap files after the device is created: offloads
/// at activation (on the thread activating the device) and queue
/// attach/detach when the driver changes the number of queue pairs (on the
/// worker). The VMM's seccomp filters must allow these.
pub const TAP_RUNTIME_IOCTLS: [u64; 2] = [libc::TUNSETOFFLOAD, libc::TUNSETQUEUE];

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(io::Error),
    /// The interface name is empty or longer than 15 bytes.
    #[error("invalid tap name '{0}'")]
    InvalidName(String),
    /// An ioctl on the tap or its control socket failed.
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl {
        /// Interface name (may be a pattern such as `vmtap%d`).
        name: String,
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// An adopted fd is not a tap opened with `IFF_VNET_HDR | IFF_NO_PI`.
    #[error("fd {0} is not a tap with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR")]
    NotVnetTap(RawFd),
    /// An adopted fd could not be duplicated or configured.
    #[error("fd {fd}: {source}")]
    Fd {
        /// The fd given.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
}

/// One queue of a tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// A zeroed `ifreq` with `name` copied in (NUL-terminated).
fn ifreq_for(name: &str) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    // SAFETY: ifreq is plain data (arrays, integers, pointers in a union);
    // all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The interface name the kernel wrote back into `req`.
fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Issues `ioctl(fd, request, req)`.
fn ioctl_ifreq(fd: RawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to an ifreq, which
    // lives for the whole call; the kernel writes at most sizeof(ifreq).
    let ret = unsafe { libc::ioctl(fd, request as _, req as *mut libc::ifreq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Issues `ioctl(fd, request, value)` for requests taking an integer.
fn ioctl_int(fd: RawFd, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests used here take their argument by value; no
    // memory is shared with the kernel.
    let ret = unsafe { libc::ioctl(fd, request as _, value) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Issues `ioctl(fd, request, &value)` for requests taking an int pointer.
fn ioctl_int_ptr(fd: RawFd, request: libc::c_ulong, value: &libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and the kernel only reads an int.
    let ret = unsafe { libc::ioctl(fd, request as _, value as *const libc::c_int) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Opens `count` queues of the tap `name`, creating it if missing
    /// (needs CAP_NET_ADMIN). `name` may be a pattern such as `vmtap%d`;
    /// the kernel picks the number. More than one queue uses
    /// `IFF_MULTI_QUEUE`.
    pub fn open_queues(name: &str, count: usize) -> Result<Vec<Tap>, TapError> {
        let multi = count > 1;
        let first = Tap::open_one(name, multi)?;
        // Later queues must use the name the kernel chose for a pattern.
        let actual = first.name.clone();
        let mut taps = vec![first];
        for _ in 1..count {
            taps.push(Tap::open_one(&actual, multi)?);
        }
        Ok(taps)
    }

    fn open_one(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        let mut req = ifreq_for(name)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        ioctl_ifreq(file.as_raw_fd(), libc::TUNSETIFF, &mut req).map_err(|source| {
            TapError::Ioctl {
                name: name.to_string(),
                op: "TUNSETIFF",
                source,
            }
        })?;
        let tap = Tap {
            file,
            name: ifreq_name(&req),
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Adopts a copy of `fd`, an already opened tap queue (e.g. passed by a
    /// management stack). Checks it is a tap with `IFF_NO_PI` and
    /// `IFF_VNET_HDR`, makes the copy non-blocking and sets the header size.
    /// The caller keeps ownership of `fd`.
    pub fn from_raw_fd_dup(fd: RawFd) -> Result<Tap, TapError> {
        let fd_err = |source| TapError::Fd { fd, source };
        // SAFETY: F_DUPFD_CLOEXEC reads no memory; an fd that is not open
        // just fails with EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(fd_err(io::Error::last_os_error()));
        }
        // SAFETY: `dup` was just returned by the kernel and nothing else
        // owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let file = File::from(owned);
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        ioctl_ifreq(file.as_raw_fd(), libc::TUNGETIFF, &mut req)
            .map_err(|_| TapError::NotVnetTap(fd))?;
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
        let needed = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & needed != needed {
            return Err(TapError::NotVnetTap(fd));
        }
        // SAFETY: F_GETFL/F_SETFL take integers only.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0
            || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0
        {
            return Err(fd_err(io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: ifreq_name(&req),
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    fn ioctl_error(&self, op: &'static str) -> impl FnOnce(io::Error) -> TapError + '_ {
        move |source| TapError::Ioctl {
            name: self.name.clone(),
            op,
            source,
        }
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len = VNET_HDR_LEN as libc::c_int;
        ioctl_int_ptr(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len)
            .map_err(self.ioctl_error("TUNSETVNETHDRSZ"))
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads the reader (the guest) accepts:
    /// `TUN_F_*` flags. Frames read afterwards may carry partial checksums
    /// or GSO only as allowed here.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        ioctl_int(
            self.file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
        .map_err(self.ioctl_error("TUNSETOFFLOAD"))
    }

    /// Attaches (frames are steered to it) or detaches this queue of a
    /// multi-queue tap.
    pub fn set_queue_attached(&self, attached: bool) -> Result<(), TapError> {
        let mut req = ifreq_for(&self.name)?;
        let flag = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.ifr_ifru.ifru_flags = flag as libc::c_short;
        ioctl_ifreq(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut req)
            .map_err(self.ioctl_error("TUNSETQUEUE"))
    }

    /// Runs `request` with an ifreq for this interface on an AF_INET
    /// control socket (interface address, netmask, flags, MTU).
    fn sock_ioctl(
        &self,
        op: &'static str,
        request: libc::c_ulong,
        fill: impl FnOnce(&mut libc::ifreq),
    ) -> Result<libc::ifreq, TapError> {
        // SAFETY: socket() takes integers only.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(self.ioctl_error("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `sock` was just created and is owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut req = ifreq_for(&self.name)?;
        fill(&mut req);
        ioctl_ifreq(sock.as_raw_fd(), request, &mut req).map_err(self.ioctl_error(op))?;
        Ok(req)
    }

    /// Sets an IPv4 address (SIOCSIFADDR) on the host side of the tap.
    pub fn set_ip(&self, ip: Ipv4Addr) -> Result<(), TapError> {
        self.sock_ioctl("SIOCSIFADDR", libc::SIOCSIFADDR, |r| {
            r.ifr_ifru.ifru_addr = sockaddr_in(ip);
        })
        .map(|_| ())
    }

    /// Sets the IPv4 netmask (SIOCSIFNETMASK).
    pub fn set_netmask(&self, mask: Ipv4Addr) -> Result<(), TapError> {
        self.sock_ioctl("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, |r| {
            r.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        })
        .map(|_| ())
    }

    /// Sets the interface MTU (SIOCSIFMTU).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        self.sock_ioctl("SIOCSIFMTU", libc::SIOCSIFMTU, |r| {
            r.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        })
        .map(|_| ())
    }

    /// Brings the interface up (IFF_UP | IFF_RUNNING), keeping its other
    /// flags.
    pub fn set_up(&self) -> Result<(), TapError> {
        let cur = self.sock_ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, |_| {})?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { cur.ifr_ifru.ifru_flags };
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.sock_ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, |r| {
            r.ifr_ifru.ifru_flags = flags | up;
        })
        .map(|_| ())
    }

    /// Another handle on the same tap queue (for the worker thread).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// An AF_INET socket address for `ip` as the generic `sockaddr`.
fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-data structs;
    // the kernel interprets the bytes by sa_family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
