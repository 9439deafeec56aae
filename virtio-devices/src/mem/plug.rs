//! Which blocks of the device region are plugged, and the rules for
//! changing that (virtio 1.2 §5.15.6.1–4): requests name aligned,
//! non-empty ranges inside the usable region; plugging a plugged block or
//! unplugging an unplugged one is an error; plugging above
//! `requested_size` is refused (NACK).

use std::ops::Range;

use super::request::{BlockState, Response};

/// The plug state of every block of the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlugMap {
    addr: u64,
    block_size: u64,
    blocks: Vec<bool>,
    plugged: u64,
}

/// What a request asks to change, once it was found valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The response to send.
    pub response: Response,
    /// Guest ranges `(gpa, len)` the host may free (unplugged blocks).
    pub freed: Vec<(u64, u64)>,
}

impl Change {
    fn answer(response: Response) -> Self {
        Self {
            response,
            freed: Vec::new(),
        }
    }
}

impl PlugMap {
    /// An all-unplugged map of `blocks` blocks of `block_size` bytes from `addr`.
    pub fn new(addr: u64, block_size: u64, blocks: usize) -> Self {
        Self {
            addr,
            block_size,
            blocks: vec![false; blocks],
            plugged: 0,
        }
    }

    /// Bytes plugged.
    pub fn plugged_bytes(&self) -> u64 {
        self.plugged * self.block_size
    }

    /// Number of blocks in the region.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True for a region without blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Block indices of `[addr, addr + nb_blocks * block_size)`, when that
    /// is a non-empty, block-aligned range inside the region.
    fn range(&self, addr: u64, nb_blocks: u16) -> Option<Range<usize>> {
        if nb_blocks == 0 {
            return None;
        }
        let offset = addr.checked_sub(self.addr)?;
        if !offset.is_multiple_of(self.block_size) {
            return None;
        }
        let first = usize::try_from(offset / self.block_size).ok()?;
        let end = first.checked_add(usize::from(nb_blocks))?;
        (end <= self.blocks.len()).then_some(first..end)
    }

    fn gpa_range(&self, blocks: &Range<usize>) -> (u64, u64) {
        let start = self.addr + blocks.start as u64 * self.block_size;
        (start, blocks.len() as u64 * self.block_size)
    }

    /// PLUG: `requested` is the size the device asks the driver to plug.
    pub fn plug(&mut self, addr: u64, nb_blocks: u16, requested: u64) -> Change {
        let Some(range) = self.range(addr, nb_blocks) else {
            return Change::answer(Response::Error);
        };
        if self.blocks[range.clone()].iter().any(|&p| p) {
            return Change::answer(Response::Error);
        }
        let after = (self.plugged + range.len() as u64) * self.block_size;
        if after > requested {
            return Change::answer(Response::Nack);
        }
        self.blocks[range.clone()].fill(true);
        self.plugged += range.len() as u64;
        Change::answer(Response::Ack)
    }

    /// UNPLUG: the blocks become free for the host to take back.
    pub fn unplug(&mut self, addr: u64, nb_blocks: u16) -> Change {
        let Some(range) = self.range(addr, nb_blocks) else {
            return Change::answer(Response::Error);
        };
        if self.blocks[range.clone()].iter().any(|&p| !p) {
            return Change::answer(Response::Error);
        }
        self.blocks[range.clone()].fill(false);
        self.plugged -= range.len() as u64;
        Change {
            response: Response::Ack,
            freed: vec![self.gpa_range(&range)],
        }
    }

    /// UNPLUG_ALL: every plugged run is freed.
    pub fn unplug_all(&mut self) -> Change {
        let freed = self
            .plugged_runs()
            .into_iter()
            .map(|r| self.gpa_range(&r))
            .collect();
        self.blocks.fill(false);
        self.plugged = 0;
        Change {
            response: Response::Ack,
            freed,
        }
    }

    /// STATE of a range.
    pub fn state(&self, addr: u64, nb_blocks: u16) -> Response {
        let Some(range) = self.range(addr, nb_blocks) else {
            return Response::Error;
        };
        let blocks = &self.blocks[range];
        let state = if blocks.iter().all(|&p| p) {
            BlockState::Plugged
        } else if blocks.iter().all(|&p| !p) {
            BlockState::Unplugged
        } else {
            BlockState::Mixed
        };
        Response::State(state)
    }

    /// Runs of plugged blocks, as block index ranges (for a snapshot).
    pub fn plugged_runs(&self) -> Vec<Range<usize>> {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (i, _) in self.blocks.iter().enumerate().filter(|(_, &p)| p) {
            match runs.last_mut() {
                Some(last) if last.end == i => last.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    }

    /// Replaces the map by the plugged `runs` of a snapshot; `None` (and
    /// no change) when a run is empty, overlaps another or leaves the region.
    pub fn restore(&mut self, runs: &[(u64, u64)]) -> Option<()> {
        let mut blocks = vec![false; self.blocks.len()];
        let mut plugged = 0u64;
        for &(start, count) in runs {
            let start = usize::try_from(start).ok()?;
            let end = start.checked_add(usize::try_from(count).ok()?)?;
            if count == 0 || end > blocks.len() || blocks[start..end].iter().any(|&p| p) {
                return None;
            }
            blocks[start..end].fill(true);
            plugged += count;
        }
        self.blocks = blocks;
        self.plugged = plugged;
        Some(())
    }
}
