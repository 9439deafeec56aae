//! A process's threads as /proc shows them: which run under seccomp.

/// Each thread of `pid` as `(tid, name, Seccomp: value)`.
pub fn seccomp_modes(pid: u32) -> Vec<(String, String, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let Ok(entry) = entry else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // the thread exited meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "<missing>".into())
        };
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            field("Name:"),
            field("Seccomp:"),
        ));
    }
    out
}

/// The `threads` (from [`seccomp_modes`]) not in seccomp filter mode
/// (`Seccomp: 2`), one line each.
pub fn unfiltered(threads: &[(String, String, String)]) -> Vec<String> {
    threads
        .iter()
        .filter(|(_, _, mode)| mode != "2")
        .map(|(tid, name, mode)| format!("thread {tid} ({name}) has Seccomp: {mode}"))
        .collect()
}
