//! Typed constructors: the only way ops enter a [`Graph`]. Each one checks
//! the shape and dtype rules of its primitive and computes the result type,
//! so shape errors surface here with both shapes spelled out.

use crate::{BinaryOp, CmpOp, DType, Graph, Init, InputRole, NodeId, Op, PoolKind, RandDist, ReduceOp, Shape, UnaryOp};

/// A violated shape or dtype rule. The front end attaches the source location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

type Result<T> = std::result::Result<T, ShapeError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ShapeError(msg.into()))
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Result<Shape> {
    let rank = a.rank().max(b.rank());
    let mut out = vec![0; rank];
    for (i, slot) in out.iter_mut().enumerate() {
        let da = if i < rank - a.rank() { 1 } else { a.0[i - (rank - a.rank())] };
        let db = if i < rank - b.rank() { 1 } else { b.0[i - (rank - b.rank())] };
        *slot = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return err(format!("shapes {a} and {b} cannot be broadcast together (dimension {i}: {da} vs {db})")),
        };
    }
    Ok(Shape(out))
}

impl Graph {
    fn ty(&self, id: NodeId) -> (DType, Shape) {
        let n = self.node(id);
        (n.dtype, n.shape.clone())
    }

    /// An input the caller feeds per run (data, labels, recurrent state).
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> NodeId {
        self.input_with_role(name, InputRole::Data, dtype, shape)
    }

    pub fn input_with_role(&mut self, name: &str, role: InputRole, dtype: DType, shape: Shape) -> NodeId {
        self.push(Op::Input { name: name.into(), role }, dtype, shape, vec![])
    }

    pub fn param(&mut self, name: &str, dtype: DType, shape: Shape, init: Init) -> Result<NodeId> {
        if !dtype.is_float() {
            return err(format!("parameter `{name}` must be a float tensor, not {dtype}"));
        }
        Ok(self.push(Op::Param { name: name.into(), init }, dtype, shape, vec![]))
    }

    pub fn state(&mut self, name: &str, dtype: DType, shape: Shape, init: Init) -> NodeId {
        self.push(Op::State { name: name.into(), init }, dtype, shape, vec![])
    }

    pub fn full(&mut self, value: f64, dtype: DType, shape: Shape) -> NodeId {
        self.push(Op::Full { value }, dtype, shape, vec![])
    }

    pub fn iota(&mut self, shape: Shape, axis: usize, dtype: DType) -> Result<NodeId> {
        if axis >= shape.rank() {
            return err(format!("iota axis {axis} is out of range for shape {shape}"));
        }
        Ok(self.push(Op::Iota { axis }, dtype, shape, vec![]))
    }

    pub fn rand(&mut self, dist: RandDist, dtype: DType, shape: Shape) -> Result<NodeId> {
        if !dtype.is_float() {
            return err(format!("random numbers must be float, not {dtype}"));
        }
        Ok(self.push(Op::Rand { dist }, dtype, shape, vec![]))
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        let numeric_ok = matches!(op, UnaryOp::Neg | UnaryOp::Abs) && dtype == DType::I64;
        if !dtype.is_float() && !numeric_ok {
            return err(format!("{} needs a float tensor, got {dtype}{shape}", Op::Unary(op).mnemonic()));
        }
        Ok(self.push(Op::Unary(op), dtype, shape, vec![x]))
    }

    fn same_type(&self, what: &str, a: NodeId, b: NodeId) -> Result<(DType, Shape)> {
        let (da, sa) = self.ty(a);
        let (db, sb) = self.ty(b);
        if sa != sb {
            return err(format!("{what}: shape mismatch {sa} vs {sb}"));
        }
        if da != db {
            return err(format!("{what}: dtype mismatch {da} vs {db}"));
        }
        Ok((da, sa))
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (dtype, shape) = self.same_type(Op::Binary(op).mnemonic(), a, b)?;
        if dtype == DType::Bool && !matches!(op, BinaryOp::Max | BinaryOp::Min) {
            return err(format!("{} is not defined on bool tensors", Op::Binary(op).mnemonic()));
        }
        if op == BinaryOp::Pow && !dtype.is_float() {
            return err(format!("pow needs float tensors, got {dtype}"));
        }
        Ok(self.push(Op::Binary(op), dtype, shape, vec![a, b]))
    }

    pub fn compare(&mut self, op: CmpOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (_, shape) = self.same_type(Op::Compare(op).mnemonic(), a, b)?;
        Ok(self.push(Op::Compare(op), DType::Bool, shape, vec![a, b]))
    }

    pub fn select(&mut self, cond: NodeId, on_true: NodeId, on_false: NodeId) -> Result<NodeId> {
        let (dc, sc) = self.ty(cond);
        if dc != DType::Bool {
            return err(format!("select: condition must be bool, got {dc}"));
        }
        let (dtype, shape) = self.same_type("select", on_true, on_false)?;
        if sc != shape {
            return err(format!("select: condition shape {sc} vs values {shape}"));
        }
        Ok(self.push(Op::Select, dtype, shape, vec![cond, on_true, on_false]))
    }

    fn check_axes(shape: &Shape, axes: &[usize], what: &str) -> Result<()> {
        for (i, &a) in axes.iter().enumerate() {
            if a >= shape.rank() {
                return err(format!("{what}: axis {a} is out of range for shape {shape} (rank {})", shape.rank()));
            }
            if axes[..i].contains(&a) {
                return err(format!("{what}: axis {a} appears twice"));
            }
        }
        Ok(())
    }

    /// Reduces over `axes`, keeping each as size 1.
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        Self::check_axes(&shape, axes, "reduce")?;
        if dtype == DType::Bool {
            return err("reduce: cast a bool tensor before reducing it");
        }
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        let mut out = shape.0.clone();
        for &a in &axes {
            out[a] = 1;
        }
        Ok(self.push(Op::Reduce { op, axes }, dtype, Shape(out), vec![x]))
    }

    pub fn argmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        let (_, shape) = self.ty(x);
        Self::check_axes(&shape, &[axis], "argmax")?;
        let mut out = shape.0.clone();
        out[axis] = 1;
        Ok(self.push(Op::ArgMax { axis }, DType::I64, Shape(out), vec![x]))
    }

    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> Result<NodeId> {
        let (dtype, from) = self.ty(x);
        if from.numel() != shape.numel() {
            return err(format!("cannot reshape {from} ({} elements) to {shape} ({} elements)", from.numel(), shape.numel()));
        }
        if from == shape {
            return Ok(x);
        }
        Ok(self.push(Op::Reshape, dtype, shape, vec![x]))
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        if perm.len() != shape.rank() {
            return err(format!("permute: {} axes given for shape {shape}", perm.len()));
        }
        Self::check_axes(&shape, perm, "permute")?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let out = perm.iter().map(|&p| shape.0[p]).collect();
        Ok(self.push(Op::Permute { perm: perm.to_vec() }, dtype, Shape(out), vec![x]))
    }

    /// NumPy `broadcast_to`.
    pub fn broadcast(&mut self, x: NodeId, shape: Shape) -> Result<NodeId> {
        let (dtype, from) = self.ty(x);
        if broadcast_shapes(&from, &shape).ok().as_ref() != Some(&shape) {
            return err(format!("cannot broadcast {from} to {shape}"));
        }
        if from == shape {
            return Ok(x);
        }
        Ok(self.push(Op::Broadcast, dtype, shape, vec![x]))
    }

    /// Broadcasts two operands to their common shape.
    pub fn broadcast_pair(&mut self, a: NodeId, b: NodeId) -> Result<(NodeId, NodeId)> {
        let shape = broadcast_shapes(self.shape(a), self.shape(b))?;
        Ok((self.broadcast(a, shape.clone())?, self.broadcast(b, shape)?))
    }

    pub fn slice(&mut self, x: NodeId, starts: &[usize], ends: &[usize], steps: &[usize]) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        let r = shape.rank();
        if starts.len() != r || ends.len() != r || steps.len() != r {
            return err(format!("slice: expected {r} ranges for shape {shape}"));
        }
        let mut out = Vec::with_capacity(r);
        for i in 0..r {
            if steps[i] == 0 {
                return err("slice: step must be positive");
            }
            if starts[i] > ends[i] || ends[i] > shape.0[i] {
                return err(format!("slice {}..{} is out of range for axis {i} of size {} in {shape}", starts[i], ends[i], shape.0[i]));
            }
            out.push((ends[i] - starts[i]).div_ceil(steps[i]));
        }
        if out == shape.0 {
            return Ok(x);
        }
        let op = Op::Slice { starts: starts.to_vec(), ends: ends.to_vec(), steps: steps.to_vec() };
        Ok(self.push(op, dtype, Shape(out), vec![x]))
    }

    pub fn pad(&mut self, x: NodeId, lo: &[usize], hi: &[usize], interior: &[usize], value: f64) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        let r = shape.rank();
        if lo.len() != r || hi.len() != r || interior.len() != r {
            return err(format!("pad: expected {r} (lo, hi, interior) triples for shape {shape}"));
        }
        if lo.iter().chain(hi).chain(interior).all(|&p| p == 0) {
            return Ok(x);
        }
        let out = (0..r).map(|i| shape.0[i].saturating_add(lo[i]).saturating_add(hi[i]).saturating_add(interior[i].saturating_mul(shape.0[i].saturating_sub(1)))).collect();
        let op = Op::Pad { lo: lo.to_vec(), hi: hi.to_vec(), interior: interior.to_vec(), value };
        Ok(self.push(op, dtype, Shape(out), vec![x]))
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        let Some(&first) = xs.first() else { return err("concat of nothing") };
        if xs.len() == 1 {
            return Ok(first);
        }
        let (dtype, shape) = self.ty(first);
        Self::check_axes(&shape, &[axis], "concat")?;
        let mut total = 0;
        for &x in xs {
            let (d, s) = self.ty(x);
            let same_rest = s.rank() == shape.rank() && (0..s.rank()).all(|i| i == axis || s.0[i] == shape.0[i]);
            if d != dtype || !same_rest {
                return err(format!("concat along axis {axis}: {dtype}{shape} vs {d}{s}"));
            }
            total = s.0[axis].saturating_add(total);
        }
        let mut out = shape.0.clone();
        out[axis] = total;
        Ok(self.push(Op::Concat { axis }, dtype, Shape(out), xs.to_vec()))
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (da, sa) = self.ty(a);
        let (db, sb) = self.ty(b);
        if da != db || !da.is_float() {
            return err(format!("matmul needs two float tensors of one dtype, got {da} and {db}"));
        }
        let (ra, rb) = (sa.rank(), sb.rank());
        if ra < 2 || ra != rb || sa.0[..ra - 2] != sb.0[..rb - 2] || sa.0[ra - 1] != sb.0[rb - 2] {
            return err(format!("matmul: cannot multiply {sa} by {sb}"));
        }
        let mut out = sa.0.clone();
        out[ra - 1] = sb.0[rb - 1];
        Ok(self.push(Op::MatMul, da, Shape(out), vec![a, b]))
    }

    pub fn gather(&mut self, x: NodeId, idx: NodeId, axis: usize) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        let (di, si) = self.ty(idx);
        Self::check_axes(&shape, &[axis], "gather")?;
        if di != DType::I64 {
            return err(format!("gather: indices must be i64, got {di}"));
        }
        let mut out = shape.0[..axis].to_vec();
        out.extend(&si.0);
        out.extend(&shape.0[axis + 1..]);
        Ok(self.push(Op::Gather { axis }, dtype, Shape(out), vec![x, idx]))
    }

    pub fn scatter_add(&mut self, idx: NodeId, updates: NodeId, shape: Shape, axis: usize) -> Result<NodeId> {
        let (di, si) = self.ty(idx);
        let (dtype, su) = self.ty(updates);
        Self::check_axes(&shape, &[axis], "scatter_add")?;
        let mut expect = shape.0[..axis].to_vec();
        expect.extend(&si.0);
        expect.extend(&shape.0[axis + 1..]);
        if di != DType::I64 || su.0 != expect {
            return err(format!("scatter_add: updates {su} and indices {di}{si} do not fit {shape} along axis {axis}"));
        }
        Ok(self.push(Op::ScatterAdd { axis }, dtype, shape, vec![idx, updates]))
    }

    pub fn cast(&mut self, x: NodeId, dtype: DType) -> NodeId {
        let (from, shape) = self.ty(x);
        if from == dtype {
            return x;
        }
        self.push(Op::Cast, dtype, shape, vec![x])
    }

    pub fn stop_gradient(&mut self, x: NodeId) -> NodeId {
        let (dtype, shape) = self.ty(x);
        self.push(Op::StopGradient, dtype, shape, vec![x])
    }

    pub fn conv2d(&mut self, x: NodeId, w: NodeId, stride: [usize; 2]) -> Result<NodeId> {
        let (dx, sx) = self.ty(x);
        let (dw, sw) = self.ty(w);
        if dx != dw || !dx.is_float() {
            return err(format!("conv2d needs float input and kernel of one dtype, got {dx} and {dw}"));
        }
        let (&[n, c, h, wd], &[o, ci, kh, kw]) = (&sx.0[..], &sw.0[..]) else {
            return err(format!("conv2d needs a [N, C, H, W] input and an [O, C, kh, kw] kernel, got {sx} and {sw}"));
        };
        if c != ci {
            return err(format!("conv2d: input has {c} channels but the kernel {sw} expects {ci}"));
        }
        if kh > h || kw > wd || kh == 0 || kw == 0 {
            return err(format!("conv2d: kernel {kh}x{kw} does not fit the {h}x{wd} input {sx}"));
        }
        if stride.contains(&0) {
            return err("conv2d: stride must be positive");
        }
        let out = Shape(vec![n, o, (h - kh) / stride[0] + 1, (wd - kw) / stride[1] + 1]);
        Ok(self.push(Op::Conv2d { stride }, dx, out, vec![x, w]))
    }

    pub fn pool2d(&mut self, kind: PoolKind, x: NodeId, window: [usize; 2], stride: [usize; 2]) -> Result<NodeId> {
        let (dtype, shape) = self.ty(x);
        let [n, c, h, w] = shape.0[..] else {
            return err(format!("pooling needs a [N, C, H, W] input, got {shape}"));
        };
        if !dtype.is_float() {
            return err(format!("pooling needs a float tensor, got {dtype}"));
        }
        if window[0] > h || window[1] > w || window.contains(&0) {
            return err(format!("pooling window {}x{} does not fit the {h}x{w} input {shape}", window[0], window[1]));
        }
        if stride.contains(&0) {
            return err("pooling: stride must be positive");
        }
        let out = Shape(vec![n, c, (h - window[0]) / stride[0] + 1, (w - window[1]) / stride[1] + 1]);
        Ok(self.push(Op::Pool2d { kind, window, stride }, dtype, out, vec![x]))
    }
}

impl Graph {
    /// Re-adds `op` through its typed constructor: how passes copy a node into
    /// a new graph. `dtype` and `shape` are only read by ops that take them as
    /// an attribute (nullary ops, reshape, broadcast, cast, scatter_add).
    pub fn add_op(&mut self, op: &Op, args: &[NodeId], dtype: DType, shape: &Shape) -> Result<NodeId> {
        let arity = |n: usize| -> Result<()> {
            if args.len() == n { Ok(()) } else { err(format!("{} takes {n} operands, got {}", op.mnemonic(), args.len())) }
        };
        match op {
            Op::Input { name, role } => Ok(self.input_with_role(name, role.clone(), dtype, shape.clone())),
            Op::Param { name, init } => self.param(name, dtype, shape.clone(), init.clone()),
            Op::State { name, init } => Ok(self.state(name, dtype, shape.clone(), init.clone())),
            Op::Full { value } => Ok(self.full(*value, dtype, shape.clone())),
            Op::Iota { axis } => self.iota(shape.clone(), *axis, dtype),
            Op::Rand { dist } => self.rand(*dist, dtype, shape.clone()),
            Op::Unary(u) => arity(1).and_then(|_| self.unary(*u, args[0])),
            Op::Binary(b) => arity(2).and_then(|_| self.binary(*b, args[0], args[1])),
            Op::Compare(c) => arity(2).and_then(|_| self.compare(*c, args[0], args[1])),
            Op::Select => arity(3).and_then(|_| self.select(args[0], args[1], args[2])),
            Op::Reduce { op: r, axes } => arity(1).and_then(|_| self.reduce(*r, args[0], axes)),
            Op::ArgMax { axis } => arity(1).and_then(|_| self.argmax(args[0], *axis)),
            Op::Reshape => arity(1).and_then(|_| self.reshape(args[0], shape.clone())),
            Op::Permute { perm } => arity(1).and_then(|_| self.permute(args[0], perm)),
            Op::Broadcast => arity(1).and_then(|_| self.broadcast(args[0], shape.clone())),
            Op::Slice { starts, ends, steps } => arity(1).and_then(|_| self.slice(args[0], starts, ends, steps)),
            Op::Pad { lo, hi, interior, value } => arity(1).and_then(|_| self.pad(args[0], lo, hi, interior, *value)),
            Op::Concat { axis } => self.concat(args, *axis),
            Op::MatMul => arity(2).and_then(|_| self.matmul(args[0], args[1])),
            Op::Gather { axis } => arity(2).and_then(|_| self.gather(args[0], args[1], *axis)),
            Op::ScatterAdd { axis } => arity(2).and_then(|_| self.scatter_add(args[0], args[1], shape.clone(), *axis)),
            Op::Cast => arity(1).map(|_| self.cast(args[0], dtype)),
            Op::StopGradient => arity(1).map(|_| self.stop_gradient(args[0])),
            Op::Conv2d { stride } => arity(2).and_then(|_| self.conv2d(args[0], args[1], *stride)),
            Op::Pool2d { kind, window, stride } => arity(1).and_then(|_| self.pool2d(*kind, args[0], *window, *stride)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let s = |v: &[usize]| Shape(v.to_vec());
        assert_eq!(broadcast_shapes(&s(&[2, 1, 3]), &s(&[4, 1])).unwrap(), s(&[2, 4, 3]));
        assert_eq!(broadcast_shapes(&s(&[]), &s(&[5])).unwrap(), s(&[5]));
        let e = broadcast_shapes(&s(&[2, 3]), &s(&[4])).unwrap_err();
        assert_eq!(e.0, "shapes [2, 3] and [4] cannot be broadcast together (dimension 1: 3 vs 4)");
    }

    #[test]
    fn matmul_and_conv_shapes() {
        let mut g = Graph::new("t");
        let a = g.input("a", DType::F32, Shape(vec![8, 784]));
        let w = g.param("w", DType::F32, Shape(vec![784, 10]), Init::Zeros).unwrap();
        let y = g.matmul(a, w).unwrap();
        assert_eq!(g.shape(y).0, vec![8, 10]);
        assert!(g.matmul(w, w).is_err());
        let x = g.input("x", DType::F32, Shape(vec![1, 1, 32, 32]));
        let k = g.param("k", DType::F32, Shape(vec![6, 1, 5, 5]), Init::XavierUniform).unwrap();
        let c = g.conv2d(x, k, [1, 1]).unwrap();
        assert_eq!(g.shape(c).0, vec![1, 6, 28, 28]);
        let p = g.pool2d(PoolKind::Avg, c, [2, 2], [2, 2]).unwrap();
        assert_eq!(g.shape(p).0, vec![1, 6, 14, 14]);
    }

    #[test]
    fn identity_reshapes_are_not_nodes() {
        let mut g = Graph::new("t");
        let a = g.input("a", DType::F32, Shape(vec![2, 3]));
        assert_eq!(g.reshape(a, Shape(vec![2, 3])).unwrap(), a);
        assert_eq!(g.broadcast(a, Shape(vec![2, 3])).unwrap(), a);
        assert_eq!(g.permute(a, &[0, 1]).unwrap(), a);
        assert_eq!(g.len(), 1);
    }
}
