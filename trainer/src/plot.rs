//! A loss curve as a self-contained SVG (no plotting dependency for one polyline).

use std::fmt::Write;

/// SVG of `points` (step, loss) with a moving average over `window` points.
pub fn loss_svg(title: &str, points: &[(usize, f64)], window: usize) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let finite: Vec<(usize, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(svg, r#"<text x="{pad}" y="20">{}</text>"#, escape(title));
    if finite.is_empty() {
        svg.push_str("</svg>\n");
        return svg;
    }
    let x0 = finite[0].0 as f64;
    let x1 = (finite[finite.len() - 1].0 as f64).max(x0 + 1.0);
    let lo = finite.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = finite
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-9);
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - lo) / (hi - lo) * (h - 2.0 * pad);
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#333"/>"##,
        b = h - pad,
        r = w - pad
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="{}">{hi:.3}</text><text x="4" y="{}">{lo:.3}</text>"#,
        pad + 4.0,
        h - pad
    );
    let _ = write!(
        svg,
        r#"<text x="{pad}" y="{}">step {x0}</text><text x="{}" y="{}" text-anchor="end">step {x1}</text>"#,
        h - pad + 16.0,
        w - pad,
        h - pad + 16.0
    );
    let line = |pts: &[(f64, f64)], colour: &str, width: f64| {
        let coords: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>"#,
            coords.join(" ")
        )
    };
    let raw: Vec<(f64, f64)> = finite.iter().map(|&(s, l)| (s as f64, l)).collect();
    svg.push_str(&line(&raw, "#9ecae1", 1.0));
    let window = window.max(1);
    let smooth: Vec<(f64, f64)> = (0..raw.len())
        .map(|i| {
            let from = i.saturating_sub(window - 1);
            let span = &raw[from..=i];
            (
                raw[i].0,
                span.iter().map(|p| p.1).sum::<f64>() / span.len() as f64,
            )
        })
        .collect();
    svg.push_str(&line(&smooth, "#08519c", 2.0));
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_curves_and_survives_nan_and_empty_input() {
        let svg = loss_svg(
            "loss <x>",
            &[(0, 2.0), (1, f64::NAN), (2, 1.0), (3, 0.5)],
            2,
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("loss &lt;x&gt;") && !svg.contains("NaN"));
        assert!(loss_svg("empty", &[], 5).ends_with("</svg>\n"));
    }
}
