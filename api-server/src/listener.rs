//! The API socket: bound to a path, or adopted from an inherited descriptor.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::ApiError;

/// Binds or adopts the API socket from an `--api-socket` value.
///
/// Accepted forms (as Cloud Hypervisor's): `path=/x` or a bare `/x` binds a
/// new socket at that path; an existing socket file is removed first only if
/// nothing listens on it (a live one is [`ApiError::InUse`], a non-socket file
/// [`ApiError::NotASocket`]). `fd=N` adopts inherited descriptor `N`, which
/// must be an open, listening `AF_UNIX` stream socket; the listener then owns
/// it (it must not be used or closed elsewhere) and it is marked close-on-exec.
pub fn listener_from_arg(arg: &str) -> Result<UnixListener, ApiError> {
    let arg = arg.trim();
    if let Some(fd) = arg.strip_prefix("fd=") {
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| ApiError::InvalidArg(arg.to_string()))?;
        return adopt_fd(fd);
    }
    let path = match arg.strip_prefix("path=") {
        Some(path) => path,
        // A bare path; `key=value` with any other key is refused.
        None => match (arg.find('='), arg.find('/')) {
            (Some(eq), Some(slash)) if eq < slash => "",
            (Some(_), None) => "",
            _ => arg,
        },
    };
    if path.is_empty() {
        return Err(ApiError::InvalidArg(arg.to_string()));
    }
    bind_path(Path::new(path))
}

/// Binds `path`, first removing a stale socket file nobody listens on.
fn bind_path(path: &Path) -> Result<UnixListener, ApiError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|source| ApiError::Stale {
                    path: path.to_path_buf(),
                    source,
                })?;
                log::info!("removed stale API socket {}", path.display());
            }
            Err(source) => {
                return Err(ApiError::Stale {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
        Ok(_) => return Err(ApiError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ApiError::Stale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: PathBuf::from(path),
        source,
    })
}

/// Reads an integer socket option of `fd`.
fn sockopt(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes passed; the
    // kernel checks `fd` and fails with EBADF/ENOTSOCK if it is not a socket.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Takes ownership of inherited listening socket `fd` after checking it.
fn adopt_fd(fd: RawFd) -> Result<UnixListener, ApiError> {
    let bad = |reason: String| ApiError::BadFd { fd, reason };
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| bad(e.to_string()))?;
    if domain != libc::AF_UNIX {
        return Err(bad("not a Unix domain socket".into()));
    }
    let kind = sockopt(fd, libc::SO_TYPE).map_err(|e| bad(e.to_string()))?;
    if kind != libc::SOCK_STREAM {
        return Err(bad("not a stream socket".into()));
    }
    let listening = sockopt(fd, libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))?;
    if listening == 0 {
        return Err(bad("socket is not listening".into()));
    }
    // SAFETY: plain fcntl on a descriptor just checked to be an open socket.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(bad(io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` is an open, listening AF_UNIX stream socket (checked above)
    // that the process inherited for this purpose; the caller hands its
    // ownership to the listener, as documented on `listener_from_arg`.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use vmm_sys_util::tempdir::TempDir;

    fn tmp() -> TempDir {
        TempDir::new_with_prefix("/tmp/chv-api-listener").unwrap()
    }

    #[test]
    fn path_forms() {
        let dir = tmp();
        let a = dir.as_path().join("a.sock");
        let b = dir.as_path().join("b.sock");
        let la = listener_from_arg(&format!("path={}", a.display())).unwrap();
        let lb = listener_from_arg(&format!(" {} ", b.display())).unwrap();
        assert_eq!(la.local_addr().unwrap().as_pathname(), Some(a.as_path()));
        assert_eq!(lb.local_addr().unwrap().as_pathname(), Some(b.as_path()));
    }

    #[test]
    fn invalid_args() {
        for arg in ["", "path=", "fd=", "fd=x", "fd=-1", "foo=bar"] {
            assert!(
                matches!(listener_from_arg(arg), Err(ApiError::InvalidArg(_))),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_not() {
        let dir = tmp();
        let p = dir.as_path().join("api.sock");
        let live = UnixListener::bind(&p).unwrap();
        assert!(matches!(
            listener_from_arg(p.to_str().unwrap()),
            Err(ApiError::InUse(_))
        ));
        drop(live); // leaves the socket file behind, nobody listening
        assert!(p.exists());
        let l = listener_from_arg(p.to_str().unwrap()).unwrap();
        UnixStream::connect(&p).unwrap();
        drop(l);
    }

    #[test]
    fn regular_file_is_left_alone() {
        let dir = tmp();
        let p = dir.as_path().join("file");
        std::fs::write(&p, b"keep").unwrap();
        assert!(matches!(
            listener_from_arg(p.to_str().unwrap()),
            Err(ApiError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
    }

    #[test]
    fn missing_directory_fails_to_bind() {
        let dir = tmp();
        let p = dir.as_path().join("no/such/dir/api.sock");
        assert!(matches!(
            listener_from_arg(p.to_str().unwrap()),
            Err(ApiError::Bind { .. })
        ));
    }

    #[test]
    fn adopts_listening_fd() {
        let dir = tmp();
        let p = dir.as_path().join("fd.sock");
        let fd = UnixListener::bind(&p).unwrap().into_raw_fd();
        let l = listener_from_arg(&format!("fd={fd}")).unwrap();
        assert_eq!(l.as_raw_fd(), fd);
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn refuses_unsuitable_fds() {
        // A connected, not listening, Unix socket.
        let (a, _b) = UnixStream::pair().unwrap();
        let err = listener_from_arg(&format!("fd={}", a.as_raw_fd())).unwrap_err();
        assert!(matches!(err, ApiError::BadFd { .. }), "{err}");
        // A regular file.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let err = listener_from_arg(&format!("fd={}", f.as_raw_fd())).unwrap_err();
        assert!(matches!(err, ApiError::BadFd { .. }), "{err}");
        // A closed descriptor number.
        let err = listener_from_arg("fd=999999").unwrap_err();
        assert!(matches!(err, ApiError::BadFd { .. }), "{err}");
    }
}
