//! The stable text form of a graph, used by `d2l ir` and snapshot tests.
//!
//! ```text
//! graph mlp
//!   %0: f32[256, 784] = input "x"
//!   %1: f32[784, 256] = param "linear_0.W" init=normal(0, 0.01)
//!   %2: f32[256, 256] = matmul %0, %1                          @ models/mlp.d2l:4:9
//!   output logits = %2
//! ```
//!
//! Node numbers are renumbered densely, so a graph's text does not depend on
//! how it was built, only on what it contains.

use std::fmt::Write;

use crate::{Graph, InputRole, Op, OutputRole};

fn list(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn attrs(op: &Op) -> String {
    match op {
        Op::Input { name, role: InputRole::Data } => format!(" \"{name}\""),
        Op::Input { name, role: InputRole::OptimizerSlot { param } } => format!(" \"{name}\" slot_of=\"{param}\""),
        Op::Input { name, role: InputRole::StepCount } => format!(" \"{name}\" step_count"),
        Op::Param { name, init } | Op::State { name, init } => format!(" \"{name}\" init={init}"),
        Op::Full { value } => format!(" {value}"),
        Op::Iota { axis } | Op::ArgMax { axis } | Op::Concat { axis } | Op::Gather { axis } | Op::ScatterAdd { axis } => {
            format!(" axis={axis}")
        }
        Op::Reduce { axes, .. } => format!(" axes={}", list(axes)),
        Op::Permute { perm } => format!(" perm={}", list(perm)),
        Op::Slice { starts, ends, steps } => {
            let ranges: Vec<String> = (0..starts.len())
                .map(|i| if steps[i] == 1 { format!("{}..{}", starts[i], ends[i]) } else { format!("{}..{}:{}", starts[i], ends[i], steps[i]) })
                .collect();
            format!(" [{}]", ranges.join(", "))
        }
        Op::Pad { lo, hi, interior, value } if interior.iter().all(|&i| i == 0) => {
            format!(" lo={} hi={} value={value}", list(lo), list(hi))
        }
        Op::Pad { lo, hi, interior, value } => format!(" lo={} hi={} interior={} value={value}", list(lo), list(hi), list(interior)),
        Op::Conv2d { stride } => format!(" stride={}", list(stride)),
        Op::Pool2d { window, stride, .. } => format!(" window={} stride={}", list(window), list(stride)),
        Op::Rand { .. } | Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Reshape | Op::Broadcast | Op::MatMul | Op::Cast | Op::StopGradient => {
            String::new()
        }
    }
}

/// Prints a graph. `with_locs` appends the source location of each node.
pub fn print(graph: &Graph, with_locs: bool) -> String {
    let mut number = vec![usize::MAX; graph.petgraph().node_count()];
    let mut out = format!("graph {}\n", graph.name);
    for (i, id) in graph.ids().enumerate() {
        number[id.index()] = i;
        let n = graph.node(id);
        let args: Vec<String> = n.args.iter().map(|a| format!("%{}", number[a.index()])).collect();
        let args = if args.is_empty() { String::new() } else { format!(" {}", args.join(", ")) };
        let mut line = format!("  %{i}: {}{} = {}{}{}", n.dtype, n.shape, n.op.mnemonic(), args, attrs(&n.op));
        if let (true, Some(loc)) = (with_locs, &n.loc) {
            let pad = 64usize.saturating_sub(line.chars().count()).max(1);
            let _ = write!(line, "{:pad$}@ {}:{}:{}", "", loc.file, loc.line, loc.col);
        }
        out.push_str(&line);
        out.push('\n');
    }
    for o in graph.outputs() {
        let kind = match o.role {
            OutputRole::Value => "output",
            OutputRole::Update => "update",
            OutputRole::Metric => "metric",
        };
        let _ = writeln!(out, "  {kind} {} = %{}", o.name, number[o.node.index()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{BinaryOp, DType, Graph, Init, Shape, UnaryOp};

    #[test]
    fn text_form_is_stable() {
        let mut g = Graph::new("tiny");
        let x = g.input("x", DType::F32, Shape(vec![2, 3]));
        let w = g.param("w", DType::F32, Shape(vec![3, 4]), Init::Normal { mean: 0.0, std: 0.01 }).unwrap();
        let y = g.matmul(x, w).unwrap();
        let b = g.full(1.0, DType::F32, Shape(vec![4]));
        let b = g.broadcast(b, Shape(vec![2, 4])).unwrap();
        let y = g.binary(BinaryOp::Add, y, b).unwrap();
        let y = g.unary(UnaryOp::Tanh, y).unwrap();
        g.set_output("y", y);
        insta::assert_snapshot!(super::print(&g, false), @r#"
        graph tiny
          %0: f32[2, 3] = input "x"
          %1: f32[3, 4] = param "w" init=normal(0, 0.01)
          %2: f32[2, 4] = matmul %0, %1
          %3: f32[4] = full 1
          %4: f32[2, 4] = broadcast %3
          %5: f32[2, 4] = add %2, %4
          %6: f32[2, 4] = tanh %5
          output y = %6
        "#);
    }

    #[test]
    fn output_roles_are_printed() {
        let mut g = Graph::new("roles");
        let x = g.input("x", DType::F32, Shape(vec![]));
        let y = g.unary(UnaryOp::Neg, x).unwrap();
        g.set_output("y", y);
        g.set_metric("part", x);
        g.set_update("x", y);
        insta::assert_snapshot!(super::print(&g, false), @r#"
        graph roles
          %0: f32[] = input "x"
          %1: f32[] = neg %0
          output y = %1
          metric part = %0
          update x = %1
        "#);
    }
}
