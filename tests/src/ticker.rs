//! Reading the tiny test guest's ticker (`test=ticker`), which prints
//! `TICK <n>` with a growing n.

/// The first `TICK <n>` in `console`.
pub fn first_tick(console: &str) -> Option<u64> {
    ticks(console).next()
}

/// The last `TICK <n>` in `console`.
pub fn last_tick(console: &str) -> Option<u64> {
    ticks(console).next_back()
}

fn ticks(console: &str) -> impl DoubleEndedIterator<Item = u64> + '_ {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TICK ")?.parse().ok())
}
