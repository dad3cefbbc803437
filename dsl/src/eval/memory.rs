//! Memory bounds checked while a model is expanded: every tensor the graph
//! will hold, and all parameters and buffers together, must fit in the
//! machine's memory. Shapes are exact at compile time, so a model that
//! cannot be allocated is refused with a diagnostic at its source instead
//! of aborting the process when the runtime allocates it.

use d2l_ir::{Graph, NodeId};

/// The machine's physical memory in bytes (`MemTotal` of /proc/meminfo),
/// or `None` where that cannot be read (then only overflow is checked).
pub fn machine_memory() -> Option<u64> {
    static MEMORY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Bytes of node `id`, or `None` when its element count overflows.
pub fn node_bytes(graph: &Graph, id: NodeId) -> Option<u64> {
    let elements = graph.shape(id).0.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
    elements.checked_mul(graph.dtype(id).size_bytes() as u64)
}

/// `1,234,567 bytes (1.2 MB)`: exact, then readable (powers of 1000).
pub fn bytes_text(bytes: u64) -> String {
    let exact = group_digits(bytes);
    let units = ["KB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for u in units {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = Some(u);
    }
    match unit {
        None => format!("{exact} bytes"),
        Some(u) => format!("{exact} bytes ({value:.1} {u})"),
    }
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
