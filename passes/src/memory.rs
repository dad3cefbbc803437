//! Memory planning: every intermediate buffer of a fused graph gets a fixed
//! offset in one arena, computed once per compiled step. Buffers whose
//! lifetimes (first writing kernel to last reading kernel, inclusive) do not
//! overlap share memory, so a step's footprint is its peak live set, not the
//! sum of its intermediates, and nothing is allocated while it runs.
//!
//! A value that only concats read, computed by a loop over its own shape,
//! is stored by that loop straight into each concat, at its block's
//! strides, and the concats' routines copy nothing for it: a GRU's three
//! gate gradients side by side in each step's gradient (70 copies per
//! language-model step). Planning bigger operands inside their concats
//! (each step's gradient inside the stack of all steps) saved the copies
//! too, but was no faster on one core here: the consumers of the stack
//! then read what was written piecemeal long before, instead of what the
//! copy has just brought into cache.
//!
//! Fed values (inputs, parameters) and graph outputs live in the caller's
//! tensors and are not planned here.

use std::collections::HashMap;

use d2l_ir::{Graph, NodeId, Op};

use crate::fusion::{Fusion, Source, Value};

/// Alignment of every planned buffer, in bytes (a cache line; also enough
/// for any SIMD load).
pub const ALIGN: usize = 64;

/// Arena offsets of the intermediate buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    pub offsets: HashMap<NodeId, usize>,
    /// Bytes the arena needs.
    pub size: usize,
    /// Sum of the planned buffers' sizes (what no reuse would need).
    pub unshared: usize,
    /// Operands their loop stores straight into the concats that read them
    /// (see the module doc): operand → per concat, the element offset of its
    /// block and the strides of its elements there. They have no buffer of
    /// their own, and the concats' routines skip them.
    pub stored_into: HashMap<NodeId, Vec<(NodeId, i64, Vec<i64>)>>,
}

/// A buffer's size and the kernels (by position) it must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

/// Plans the intermediates of `fusion`: buffers written by kernels that
/// are not graph outputs.
pub fn plan(graph: &Graph, fusion: &Fusion) -> MemoryPlan {
    let outputs: Vec<NodeId> = graph.outputs().iter().map(|o| o.node).collect();
    let mut life: HashMap<NodeId, Lifetime> = HashMap::new();
    for id in graph.ids() {
        let first = match fusion.value(id) {
            Value::Root { kernel } | Value::Loop { kernel, stored: true } => *kernel,
            _ => continue,
        };
        if outputs.contains(&id) {
            continue;
        }
        // Saturating: a graph too big to allocate gets an arena size that
        // its allocation then refuses, instead of an overflow here.
        let bytes = graph.shape(id).numel().saturating_mul(graph.dtype(id).size_bytes());
        life.insert(id, Lifetime { bytes, first, last: first });
    }
    for k in 0..fusion.kernels.len() {
        for base in fusion.reads(graph, k) {
            if let Some(l) = life.get_mut(&base) {
                l.last = l.last.max(k);
            }
        }
    }
    // Outputs that are views of an intermediate are copied out after the
    // last kernel, so their base lives to the end.
    for &id in &outputs {
        if let Value::View(Source::Buffer { base, .. }) = fusion.value(id)
            && let Some(l) = life.get_mut(base)
        {
            l.last = usize::MAX;
        }
    }
    let unshared = life.values().fold(0usize, |n, l| n.saturating_add(aligned(l.bytes)));
    // Operands stored into their concats: no buffer of their own; each
    // concat's lives from the first kernel that writes into it.
    let stored_into = stored_into_concats(graph, fusion, &life);
    for (part, into) in &stored_into {
        let first = life[part].first;
        for (concat, _, _) in into {
            let c = life.get_mut(concat).expect("planned concats");
            c.first = c.first.min(first);
        }
    }
    for part in stored_into.keys() {
        life.remove(part);
    }
    let mut ids: Vec<NodeId> = life.keys().copied().collect();
    ids.sort();
    let lifetimes: Vec<Lifetime> = ids.iter().map(|id| life[id]).collect();
    let (offsets, size) = assign(&lifetimes);
    MemoryPlan { offsets: ids.into_iter().zip(offsets).collect(), size, unshared, stored_into }
}

/// The operands their loops can store straight into the concats that read
/// them (see the module doc): values a loop computes over their own shape,
/// read by planned concats alone, once each (a GRU's reset and update gate
/// gradients are in two, the gradients of the step's input and hidden
/// projections). Operand → per concat, the element offset of its block and
/// the strides of its elements there.
fn stored_into_concats(graph: &Graph, fusion: &Fusion, life: &HashMap<NodeId, Lifetime>) -> HashMap<NodeId, Vec<(NodeId, i64, Vec<i64>)>> {
    let outputs: Vec<NodeId> = graph.outputs().iter().map(|o| o.node).collect();
    let planned_concat = |id: NodeId| matches!(graph.node(id).op, Op::Concat { .. }) && life.contains_key(&id) && matches!(fusion.value(id), Value::Root { .. });
    let mut stored_into = HashMap::new();
    for a in graph.ids() {
        let stored_by_own_loop = match fusion.value(a) {
            Value::Loop { kernel, stored: true } => fusion.kernels[*kernel].shape == *graph.shape(a) && !matches!(graph.node(a).op, Op::Reduce { .. }),
            _ => false,
        };
        if !stored_by_own_loop || outputs.contains(&a) || !life.contains_key(&a) {
            continue;
        }
        let users = graph.users(a);
        let once = |c: NodeId| graph.node(c).args.iter().filter(|&&x| x == a).count() == 1;
        if !users.iter().all(|&c| planned_concat(c) && once(c)) {
            continue;
        }
        let into = users
            .iter()
            .map(|&c| {
                let node = graph.node(c);
                let Op::Concat { axis } = node.op else { unreachable!("a concat") };
                let strides = crate::fusion::Affine::contiguous(node.shape.dims()).strides;
                let p = node.args.iter().position(|&x| x == a).expect("an operand");
                let at: usize = node.args[..p].iter().map(|&x| graph.shape(x).dims()[axis]).sum();
                (c, at as i64 * strides[axis], strides)
            })
            .collect();
        stored_into.insert(a, into);
    }
    stored_into
}

/// `bytes` rounded up to [`ALIGN`], saturating.
fn aligned(bytes: usize) -> usize {
    bytes.saturating_add(ALIGN - 1) / ALIGN * ALIGN
}

/// First-fit offsets, largest buffers first: each buffer goes at the lowest
/// aligned offset that no buffer alive at the same time occupies.
pub fn assign(lifetimes: &[Lifetime]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lifetimes[i].bytes), lifetimes[i].first, i));
    let mut offsets = vec![0usize; lifetimes.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0;
    for i in order {
        let me = lifetimes[i];
        let bytes = aligned(me.bytes);
        // Occupied ranges of buffers alive at the same time, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| lifetimes[j].first <= me.last && me.first <= lifetimes[j].last)
            .map(|&j| (offsets[j], offsets[j].saturating_add(aligned(lifetimes[j].bytes))))
            .collect();
        busy.sort();
        let mut at = 0usize;
        for (start, end) in busy {
            if at.saturating_add(bytes) <= start {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        size = size.max(at.saturating_add(bytes));
        placed.push(i);
    }
    (offsets, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_lifetimes_share_and_overlapping_ones_do_not() {
        let l = |bytes, first, last| Lifetime { bytes, first, last };
        // a: kernels 0-1, b: 1-2 (overlaps a), c: 2-3 (can reuse a).
        let (offsets, size) = assign(&[l(100, 0, 1), l(100, 1, 2), l(100, 2, 3)]);
        assert_ne!(offsets[0], offsets[1]);
        assert_eq!(offsets[2], offsets[0]);
        assert_eq!(size, 256);
        assert!(offsets.iter().all(|o| o % ALIGN == 0));
    }
}
