//! Heatmaps as SVG, like the course's `show_heatmaps`: a grid of panels
//! (a row per attention layer, a panel per head), each a matrix of queries
//! by keys shaded from white (the smallest value of all panels) to dark
//! red (the largest), with one colour bar.

/// One panel: a `rows` x `cols` matrix, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
}

/// Side of one cell, pixels; panels with many cells get smaller ones.
fn cell_size(rows: usize, cols: usize) -> f64 {
    (240.0 / rows.max(cols).max(1) as f64).clamp(2.0, 24.0)
}

/// White to the course's `Reds` dark red.
fn shade(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let mix = |white: f64, red: f64| (white + (red - white) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(255.0, 103.0), mix(245.0, 0.0), mix(240.0, 13.0))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `grid[r]` is the r-th row of panels under its heading; `axes` names
/// the rows and columns of every panel ("queries", "keys"); `notes` are
/// lines printed on top.
pub fn svg_heatmaps(grid: &[(String, Vec<Heatmap>)], axes: (&str, &str), notes: &[String]) -> String {
    let all = grid.iter().flat_map(|(_, row)| row).flat_map(|h| h.values.iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let scale = |v: f64| (v - lo) / (hi - lo).max(1e-12);
    let (gap, title_h, label_w) = (16.0, 18.0, 18.0);
    let top = 8.0 + 16.0 * notes.len() as f64;
    let mut body = String::new();
    let (mut width, mut y): (f64, f64) = (0.0, top);
    for (heading, row) in grid {
        body.push_str(&format!("<text x=\"8\" y=\"{}\" font-weight=\"bold\">{}</text>\n", y + 12.0, escape(heading)));
        y += title_h;
        let mut x = label_w + 8.0;
        let mut row_h: f64 = 0.0;
        for h in row {
            let c = cell_size(h.rows, h.cols);
            let (pw, ph) = (c * h.cols as f64, c * h.rows as f64);
            body.push_str(&format!("<text x=\"{x}\" y=\"{}\" font-size=\"11\">{}</text>\n", y + 12.0, escape(&h.title)));
            let y0 = y + title_h;
            for r in 0..h.rows {
                for k in 0..h.cols {
                    let v = h.values[r * h.cols + k];
                    body.push_str(&format!(
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{c:.1}\" height=\"{c:.1}\" fill=\"{}\"><title>{r}, {k}: {v:.4}</title></rect>\n",
                        x + c * k as f64,
                        y0 + c * r as f64,
                        shade(scale(v))
                    ));
                }
            }
            body.push_str(&format!("<rect x=\"{x}\" y=\"{y0}\" width=\"{pw:.1}\" height=\"{ph:.1}\" fill=\"none\" stroke=\"#888\"/>\n"));
            body.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\n", x + pw / 2.0, y0 + ph + 12.0, escape(axes.1)));
            body.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\">{}</text>\n",
                x - 4.0,
                y0 + ph / 2.0,
                x - 4.0,
                y0 + ph / 2.0,
                escape(axes.0)
            ));
            x += pw + gap + label_w;
            row_h = row_h.max(title_h + ph + 16.0);
        }
        width = width.max(x);
        y += row_h + gap;
    }
    // The colour bar: lo at the bottom, hi at the top.
    let (bar_x, bar_h) = (width + 8.0, 160.0);
    for i in 0..32 {
        let t = 1.0 - i as f64 / 31.0;
        body.push_str(&format!("<rect x=\"{bar_x}\" y=\"{:.1}\" width=\"14\" height=\"{:.1}\" fill=\"{}\"/>\n", top + 12.0 + i as f64 * bar_h / 32.0, bar_h / 32.0 + 0.5, shade(t)));
    }
    body.push_str(&format!("<text x=\"{}\" y=\"{}\" font-size=\"10\">{hi:.2}</text>\n", bar_x + 18.0, top + 20.0));
    body.push_str(&format!("<text x=\"{}\" y=\"{}\" font-size=\"10\">{lo:.2}</text>\n", bar_x + 18.0, top + 12.0 + bar_h));
    let (w, h) = (bar_x + 60.0, y.max(top + bar_h + 24.0));
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for (i, note) in notes.iter().enumerate() {
        svg.push_str(&format!("<text x=\"8\" y=\"{}\">{}</text>\n", 18.0 + 16.0 * i as f64, escape(note)));
    }
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shades_run_from_white_to_dark_red() {
        assert_eq!(shade(0.0), "#fff5f0");
        assert_eq!(shade(1.0), "#67000d");
        assert_eq!(shade(f64::NAN), "#fff5f0");
    }

    #[test]
    fn every_cell_is_drawn_with_its_value() {
        let h = Heatmap { title: "a <b>".into(), rows: 2, cols: 3, values: vec![0.0, 0.5, 1.0, 0.25, 0.75, 0.0] };
        let svg = svg_heatmaps(&[("layer 1".into(), vec![h.clone(), h])], ("queries", "keys"), &["source: go .".into()]);
        assert_eq!(svg.matches("<title>").count(), 12);
        assert!(svg.contains("<title>0, 2: 1.0000</title>"));
        assert!(svg.contains("a &lt;b&gt;"), "titles are escaped");
        assert!(svg.contains("source: go .") && svg.contains("layer 1"));
        assert!(svg.contains("#67000d") && svg.contains("#fff5f0"), "the extremes get the extreme shades");
    }
}
