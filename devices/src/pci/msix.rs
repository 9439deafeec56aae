//! MSI-X (PCI Local Bus 3.0, §6.8.2): the vector table and pending-bit
//! array a device exposes in a BAR, and the enable/function-mask bits of the
//! capability's message control.
//!
//! Delivery goes through an [`MsiInterruptGroup`]; every change to an entry
//! (address, data or effective mask) is reported with `update` so the VMM
//! can keep KVM's routes in step.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::MsiInterruptGroup;

/// PCI capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes of one table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Most vectors one function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: entry masked.
const VECTOR_CONTROL_MASKED: u32 = 1;

/// Errors from building an MSI-X table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// The vector count is 0 or above [`MSIX_MAX_VECTORS`].
    #[error("invalid MSI-X vector count {0}")]
    InvalidVectorCount(u16),
    /// Saved state that does not fit this table (vector count, version).
    #[error("MSI-X state mismatch: {0}")]
    StateMismatch(String),
}

/// Version of [`MsixTableState`] this code writes and reads.
pub const MSIX_STATE_VERSION: u32 = 1;

/// One saved table entry, as the guest programmed it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntryState {
    /// Message address, low dword.
    pub addr_lo: u32,
    /// Message address, high dword.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// A snapshot of an MSI-X table: every entry, the pending bits and the
/// message-control enable/function-mask bits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MsixTableState {
    /// Format version ([`MSIX_STATE_VERSION`]).
    pub version: u32,
    /// One entry per vector.
    pub entries: Vec<MsixEntryState>,
    /// Pending bit per vector.
    pub pending: Vec<bool>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

/// Body (after ID and next pointer) of an MSI-X capability and its write
/// mask: message control (table size, enable and function-mask bits), the
/// table offset/BIR and the PBA offset/BIR.
pub fn msix_capability_body(
    num_vectors: u16,
    bar: u8,
    table_offset: u32,
    pba_offset: u32,
) -> ([u8; 10], [u8; 2]) {
    let mut body = [0u8; 10];
    let control = num_vectors.saturating_sub(1) & 0x7ff;
    body[0..2].copy_from_slice(&control.to_le_bytes());
    let bir = u32::from(bar & 7);
    body[2..6].copy_from_slice(&((table_offset & !7) | bir).to_le_bytes());
    body[6..10].copy_from_slice(&((pba_offset & !7) | bir).to_le_bytes());
    let mask = (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK).to_le_bytes();
    (body, mask)
}

/// One table entry as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// Entries start masked (PCI 3.0 §6.8.2.9).
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_CONTROL_MASKED,
        }
    }
}

impl Entry {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.addr_lo.to_le_bytes());
        b[4..8].copy_from_slice(&self.addr_hi.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 16]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            addr_lo: w(0),
            addr_hi: w(4),
            data: w(8),
            // Only the mask bit is defined; the rest is reserved (reads 0).
            control: w(12) & VECTOR_CONTROL_MASKED,
        }
    }

    fn address(&self) -> u64 {
        (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo)
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_CONTROL_MASKED != 0
    }
}

/// The MSI-X table, PBA and control bits of one function.
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    group: Arc<dyn MsiInterruptGroup>,
}

impl MsixTable {
    /// A table of `num_vectors` masked entries, MSI-X disabled.
    pub fn new(num_vectors: u16, group: Arc<dyn MsiInterruptGroup>) -> Result<Self, MsixError> {
        if num_vectors == 0 || num_vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::InvalidVectorCount(num_vectors));
        }
        let n = usize::from(num_vectors);
        Ok(Self {
            entries: vec![Entry::default(); n],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            group,
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the table occupies in its BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes the PBA occupies in its BAR (whole qwords).
    pub fn pba_size(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    /// MSI-X is enabled in message control.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector` would be held back now (disabled, function-masked or
    /// entry-masked); out-of-range vectors count as masked.
    pub fn is_masked(&self, vector: u16) -> bool {
        match self.entries.get(usize::from(vector)) {
            Some(e) => !self.enabled || self.function_masked || e.masked(),
            None => true,
        }
    }

    /// Applies the enable and function-mask bits of a message control write.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if enabled == self.enabled && function_masked == self.function_masked {
            return;
        }
        let before: Vec<bool> = (0..self.num_vectors()).map(|v| self.is_masked(v)).collect();
        self.enabled = enabled;
        self.function_masked = function_masked;
        for (v, was_masked) in before.into_iter().enumerate() {
            let v = v as u16;
            if was_masked != self.is_masked(v) {
                self.notify_update(v);
                self.deliver_pending(v);
            }
        }
    }

    /// Guest read of the table at `offset` (any width; out-of-range bytes
    /// read as all-ones).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                *b = 0xff;
                continue;
            };
            let idx = o / MSIX_TABLE_ENTRY_SIZE;
            *b = usize::try_from(idx)
                .ok()
                .and_then(|idx| self.entries.get(idx))
                .map_or(0xff, |e| e.bytes()[(o % MSIX_TABLE_ENTRY_SIZE) as usize]);
        }
    }

    /// Guest write of the table at `offset`; out-of-range bytes are ignored.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut changed: Vec<usize> = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let Some(idx) = usize::try_from(o / MSIX_TABLE_ENTRY_SIZE)
                .ok()
                .filter(|&idx| idx < self.entries.len())
            else {
                continue;
            };
            let mut bytes = self.entries[idx].bytes();
            bytes[(o % MSIX_TABLE_ENTRY_SIZE) as usize] = b;
            let e = Entry::from_bytes(&bytes);
            if e != self.entries[idx] {
                self.entries[idx] = e;
                if !changed.contains(&idx) {
                    changed.push(idx);
                }
            }
        }
        for idx in changed {
            let v = idx as u16;
            self.notify_update(v);
            self.deliver_pending(v);
        }
    }

    /// Guest read of the PBA at `offset`; out-of-range bytes read as zero.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let mut byte = 0u8;
            if let Some(first) = offset.checked_add(i as u64).and_then(|o| o.checked_mul(8)) {
                for bit in 0..8u64 {
                    let pending = first
                        .checked_add(bit)
                        .and_then(|v| usize::try_from(v).ok())
                        .and_then(|v| self.pending.get(v).copied())
                        .unwrap_or(false);
                    if pending {
                        byte |= 1 << bit;
                    }
                }
            }
            *b = byte;
        }
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// Signals `vector`: delivered now when MSI-X is enabled and the vector
    /// unmasked, otherwise left pending until it is unmasked.
    pub fn trigger(&mut self, vector: u16) -> std::io::Result<()> {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("MSI-X vector {vector} out of range"),
            ));
        }
        if self.is_masked(vector) {
            self.pending[v] = true;
            return Ok(());
        }
        self.group.trigger(vector)
    }

    /// Saves the table, PBA and control bits.
    pub fn state(&self) -> MsixTableState {
        MsixTableState {
            version: MSIX_STATE_VERSION,
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    addr_lo: e.addr_lo,
                    addr_hi: e.addr_hi,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Checks that `state` fits this table (version, vector count).
    pub fn check_state(&self, state: &MsixTableState) -> Result<(), MsixError> {
        let bad = |m: String| Err(MsixError::StateMismatch(m));
        if state.version != MSIX_STATE_VERSION {
            return bad(format!("unknown version {}", state.version));
        }
        let n = self.entries.len();
        if state.entries.len() != n || state.pending.len() != n {
            return bad(format!(
                "{} entries and {} pending bits saved, table has {n} vectors",
                state.entries.len(),
                state.pending.len()
            ));
        }
        Ok(())
    }

    /// Restores a table saved by [`Self::state`] and re-reports every
    /// vector's message and mask to the interrupt group, so the VMM's
    /// routes match the restored table. Pending vectors stay pending until
    /// the guest unmasks them. Nothing changes on error.
    pub fn restore_state(&mut self, state: &MsixTableState) -> Result<(), MsixError> {
        self.check_state(state)?;
        for (e, s) in self.entries.iter_mut().zip(&state.entries) {
            *e = Entry {
                addr_lo: s.addr_lo,
                addr_hi: s.addr_hi,
                data: s.data,
                control: s.control & VECTOR_CONTROL_MASKED,
            };
        }
        self.pending.copy_from_slice(&state.pending);
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        for v in 0..self.num_vectors() {
            self.notify_update(v);
        }
        Ok(())
    }

    /// Reports entry `v`'s current message and effective mask.
    fn notify_update(&self, v: u16) {
        let e = self.entries[usize::from(v)];
        if let Err(err) = self.group.update(v, e.address(), e.data, self.is_masked(v)) {
            log::warn!("MSI-X vector {v}: route update failed: {err}");
        }
    }

    /// Delivers `v` if it is pending and now unmasked.
    fn deliver_pending(&mut self, v: u16) {
        let i = usize::from(v);
        if self.pending[i] && !self.is_masked(v) {
            self.pending[i] = false;
            if let Err(err) = self.group.trigger(v) {
                log::warn!("MSI-X vector {v}: delivery failed: {err}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What a recording interrupt group saw.
    #[derive(Debug, PartialEq, Eq, Clone)]
    pub(crate) enum Event {
        Update(u16, u64, u32, bool),
        Trigger(u16),
    }

    /// Records every update and trigger.
    #[derive(Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<Event>>);

    impl Recorder {
        pub(crate) fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl MsiInterruptGroup for Recorder {
        fn update(&self, v: u16, a: u64, d: u32, m: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().push(Event::Update(v, a, d, m));
            Ok(())
        }
        fn trigger(&self, v: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(Event::Trigger(v));
            Ok(())
        }
    }

    fn program(t: &mut MsixTable, v: u64, addr: u64, data: u32) {
        let base = v * 16;
        t.table_write(base, &addr.to_le_bytes());
        t.table_write(base + 8, &data.to_le_bytes());
    }

    fn unmask(t: &mut MsixTable, v: u64) {
        t.table_write(v * 16 + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn capability_body() {
        let (body, mask) = msix_capability_body(3, 0, 0x4000, 0x6000);
        assert_eq!(&body[0..2], &[2, 0]);
        assert_eq!(&body[2..6], &0x4000u32.to_le_bytes());
        assert_eq!(&body[6..10], &0x6000u32.to_le_bytes());
        assert_eq!(mask, [0, 0xc0]);
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let rec = Arc::new(Recorder::default());
        let mut t = MsixTable::new(3, rec.clone()).unwrap();
        assert!(MsixTable::new(0, rec.clone()).is_err());
        assert!(MsixTable::new(2049, rec.clone()).is_err());
        assert_eq!(t.pba_size(), 8);
        assert_eq!(t.table_size(), 48);
        t.set_control(MSIX_CONTROL_ENABLE);
        assert!(rec.take().is_empty(), "all entries still masked");
        program(&mut t, 1, 0xfee0_0000, 0x41);
        // Entry reads back what was written.
        let mut b = [0u8; 4];
        t.table_read(16 + 8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x41);
        t.table_read(16 + 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        rec.take();
        t.trigger(1).unwrap();
        assert!(t.is_pending(1));
        let mut pba = [0u8; 8];
        t.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b010);
        assert!(rec.take().is_empty());
        unmask(&mut t, 1);
        assert_eq!(
            rec.take(),
            vec![
                Event::Update(1, 0xfee0_0000, 0x41, false),
                Event::Trigger(1)
            ]
        );
        assert!(!t.is_pending(1));
        t.trigger(1).unwrap();
        assert_eq!(rec.take(), vec![Event::Trigger(1)]);
        assert!(t.trigger(3).is_err());
        assert!(t.trigger(u16::MAX).is_err());
    }

    #[test]
    fn function_mask_and_enable() {
        let rec = Arc::new(Recorder::default());
        let mut t = MsixTable::new(2, rec.clone()).unwrap();
        program(&mut t, 0, 0xfee0_1000, 7);
        unmask(&mut t, 0);
        rec.take();
        // Disabled: held pending, delivered on enable.
        t.trigger(0).unwrap();
        assert!(rec.take().is_empty());
        t.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert!(rec.take().is_empty(), "function masked: nothing changes");
        t.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            rec.take(),
            vec![Event::Update(0, 0xfee0_1000, 7, false), Event::Trigger(0)]
        );
        t.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert_eq!(rec.take(), vec![Event::Update(0, 0xfee0_1000, 7, true)]);
        t.trigger(0).unwrap();
        assert!(rec.take().is_empty());
        t.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            rec.take(),
            vec![Event::Update(0, 0xfee0_1000, 7, false), Event::Trigger(0)]
        );
        // Vector 1 stayed masked throughout.
        assert!(t.is_masked(1));
    }

    #[test]
    fn hostile_table_accesses() {
        let rec = Arc::new(Recorder::default());
        let mut t = MsixTable::new(1, rec.clone()).unwrap();
        for off in [15, 16, 17, 100, u64::MAX - 3, u64::MAX] {
            t.table_write(off, &[0xff; 8]);
            let mut d = [0u8; 8];
            t.table_read(off, &mut d);
            t.pba_read(off, &mut d);
        }
        let mut d = [0u8; 4];
        t.table_read(16, &mut d);
        assert_eq!(d, [0xff; 4]);
        // The write at 15 set only the reserved/mask byte: still masked.
        assert!(t.is_masked(0));
        let mut pba = [0xffu8; 16];
        t.pba_read(0, &mut pba);
        assert_eq!(pba, [0; 16]);
    }

    #[test]
    fn state_restore_reprograms_routes() {
        let rec = Arc::new(Recorder::default());
        let mut t = MsixTable::new(3, rec.clone()).unwrap();
        t.set_control(MSIX_CONTROL_ENABLE);
        program(&mut t, 0, 0xfee0_0000, 0x30);
        unmask(&mut t, 0);
        program(&mut t, 2, 0xfee0_2000, 0x32);
        t.trigger(2).unwrap();
        let json = serde_json::to_string(&t.state()).unwrap();
        let saved: MsixTableState = serde_json::from_str(&json).unwrap();

        let rec2 = Arc::new(Recorder::default());
        let mut fresh = MsixTable::new(3, rec2.clone()).unwrap();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(
            rec2.take(),
            vec![
                Event::Update(0, 0xfee0_0000, 0x30, false),
                Event::Update(1, 0, 0, true),
                Event::Update(2, 0xfee0_2000, 0x32, true),
            ]
        );
        assert!(fresh.enabled());
        assert!(fresh.is_pending(2));
        fresh.trigger(0).unwrap();
        assert_eq!(rec2.take(), vec![Event::Trigger(0)]);
        // The held-back vector is delivered once the guest unmasks it.
        unmask(&mut fresh, 2);
        assert_eq!(
            rec2.take(),
            vec![
                Event::Update(2, 0xfee0_2000, 0x32, false),
                Event::Trigger(2)
            ]
        );
        assert_eq!(fresh.state().entries[0], saved.entries[0]);
    }

    #[test]
    fn state_mismatch_is_an_error() {
        let rec = Arc::new(Recorder::default());
        let saved = MsixTable::new(3, rec.clone()).unwrap().state();
        let mut small = MsixTable::new(2, rec.clone()).unwrap();
        assert!(small.restore_state(&saved).is_err());
        let mut t = MsixTable::new(3, rec.clone()).unwrap();
        let mut bad = saved.clone();
        bad.version = 7;
        assert!(t.restore_state(&bad).is_err());
        let mut bad = saved.clone();
        bad.pending.pop();
        assert!(t.restore_state(&bad).is_err());
        assert!(rec.take().is_empty(), "nothing reported on error");
    }
}
