//! Parsing the driver's requests and encoding the device's responses
//! (virtio 1.2 §5.15.6). Everything read here is guest data: short
//! buffers and unknown types are refused, nothing panics.

/// Bytes of `struct virtio_mem_req`: le16 type, 6 bytes padding, then
/// le64 addr and le16 nb_blocks (plug, unplug, state), padded to 24.
pub const REQUEST_SIZE: usize = 24;
/// Bytes of `struct virtio_mem_resp`: le16 type, 6 bytes padding, le16
/// state (meaningful for STATE requests only).
pub const RESPONSE_SIZE: usize = 10;

const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;

/// A driver request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Plug `nb_blocks` blocks from `addr`.
    Plug {
        /// Guest-physical address of the first block.
        addr: u64,
        /// Number of blocks.
        nb_blocks: u16,
    },
    /// Unplug `nb_blocks` blocks from `addr`.
    Unplug {
        /// Guest-physical address of the first block.
        addr: u64,
        /// Number of blocks.
        nb_blocks: u16,
    },
    /// Unplug every block.
    UnplugAll,
    /// Report whether the blocks are plugged, unplugged or mixed.
    State {
        /// Guest-physical address of the first block.
        addr: u64,
        /// Number of blocks.
        nb_blocks: u16,
    },
    /// A type this device does not know.
    Unknown(u16),
}

impl Request {
    /// Parses a request; `None` when `bytes` is shorter than a request.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let raw: &[u8; REQUEST_SIZE] = bytes.get(..REQUEST_SIZE)?.try_into().ok()?;
        let kind = u16::from_le_bytes([raw[0], raw[1]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[8..16]);
        let addr = u64::from_le_bytes(a);
        let nb_blocks = u16::from_le_bytes([raw[16], raw[17]]);
        Some(match kind {
            REQ_PLUG => Self::Plug { addr, nb_blocks },
            REQ_UNPLUG => Self::Unplug { addr, nb_blocks },
            REQ_UNPLUG_ALL => Self::UnplugAll,
            REQ_STATE => Self::State { addr, nb_blocks },
            other => Self::Unknown(other),
        })
    }
}

/// What a range of blocks is (the STATE response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Every block is plugged.
    Plugged = 0,
    /// No block is plugged.
    Unplugged = 1,
    /// Some are, some are not.
    Mixed = 2,
}

/// The device's answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ack,
    /// Refused for now (plugging above `requested_size`); the driver may retry later.
    Nack,
    /// The device is busy; retry later.
    Busy,
    /// The request is invalid (bad range, wrong state, unknown type).
    Error,
    /// The state of the blocks asked about.
    State(BlockState),
}

impl Response {
    /// The response as the driver reads it.
    pub fn encode(self) -> [u8; RESPONSE_SIZE] {
        let (kind, state): (u16, u16) = match self {
            Self::Ack => (0, 0),
            Self::Nack => (1, 0),
            Self::Busy => (2, 0),
            Self::Error => (3, 0),
            Self::State(s) => (0, s as u16),
        };
        let mut out = [0u8; RESPONSE_SIZE];
        out[0..2].copy_from_slice(&kind.to_le_bytes());
        out[8..10].copy_from_slice(&state.to_le_bytes());
        out
    }
}
