//! virtio-fs (virtio 1.2 §5.11) served by a vhost-user backend such as
//! virtiofsd: the device model holds the tag and the queue layout (one
//! high-priority queue, then the request queues); FUSE requests go from
//! the guest's rings straight to the backend.

use std::path::PathBuf;

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use crate::vhost_user::{
    check_queue_options, VhostUserConnection, VhostUserDevice, VhostUserError, VhostUserSpec,
    DEFAULT_TIMEOUT,
};
use crate::worker::ThreadSetup;

/// Virtio device type of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// Bytes of the tag field in the config space.
pub const TAG_LEN: usize = 36;
/// Default size of every queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

/// What the user configures for one virtio-fs device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsOptions {
    /// Mount tag the guest uses (`mount -t virtiofs <tag> …`).
    pub tag: String,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Number of request queues (the high-priority queue comes on top).
    pub num_queues: usize,
    /// Size of each queue.
    pub queue_size: u16,
}

/// Bad virtio-fs options or a backend that cannot serve them.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than [`TAG_LEN`] bytes.
    #[error("tag must be 1 to {TAG_LEN} bytes, got {0}")]
    Tag(usize),
    /// The backend.
    #[error("{0}")]
    Backend(#[from] VhostUserError),
}

impl FsOptions {
    /// Checks the fields (each error names the field).
    pub fn validate(&self) -> Result<(), FsError> {
        if self.tag.is_empty() || self.tag.len() > TAG_LEN {
            return Err(FsError::Tag(self.tag.len()));
        }
        check_queue_options(self.num_queues, self.queue_size)?;
        Ok(())
    }

    /// The device's configuration space: the tag, NUL-padded, then the
    /// number of request queues.
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; TAG_LEN + 4];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        c[..n].copy_from_slice(&tag[..n]);
        c[TAG_LEN..].copy_from_slice(&(self.num_queues as u32).to_le_bytes());
        c
    }

    fn spec(&self) -> VhostUserSpec {
        VhostUserSpec {
            name: "virtio-fs".into(),
            device_type: VIRTIO_ID_FS,
            queue_sizes: vec![self.queue_size; self.num_queues + 1],
            features: (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << VIRTIO_RING_F_EVENT_IDX),
            frontend_features: 0,
            config: self.config_space(),
            reconnect: false,
        }
    }
}

/// Connects to the backend and builds the virtio-fs device. `setup` is the
/// worker threads' seccomp hook.
pub fn new_virtio_fs(
    opts: &FsOptions,
    setup: Option<ThreadSetup>,
) -> Result<VhostUserDevice, FsError> {
    opts.validate()?;
    let conn = VhostUserConnection::connect(
        &opts.socket,
        opts.num_queues + 1,
        DEFAULT_TIMEOUT,
        setup.clone(),
    )?;
    let mut dev = VhostUserDevice::new(opts.spec(), conn);
    if let Some(s) = setup {
        dev.set_thread_setup(s);
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> FsOptions {
        FsOptions {
            tag: "kataShared".into(),
            socket: "/nonexistent".into(),
            num_queues: 1,
            queue_size: 1024,
        }
    }

    #[test]
    fn config_space_has_tag_and_queue_count() {
        let c = opts().config_space();
        assert_eq!(&c[..10], b"kataShared");
        assert!(c[10..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&c[TAG_LEN..], &1u32.to_le_bytes());
    }

    #[test]
    fn bad_options_name_the_field() {
        let mut o = opts();
        o.tag = "x".repeat(37);
        assert!(o.validate().unwrap_err().to_string().starts_with("tag"));
        let mut o = opts();
        o.num_queues = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("num_queues"));
        let mut o = opts();
        o.queue_size = 1000;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("queue_size"));
        let err = new_virtio_fs(&opts(), None).err().unwrap();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
