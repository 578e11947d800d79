//! Charts as self-contained SVG text, drawn with `plotters`' SVG backend: training
//! loss curves ([`loss_svg`]), any set of named curves ([`line_chart`], e.g. PPO's
//! reward and KL per step) and grouped bars ([`bar_chart`], `prip eval images`).
//!
//! Design choice: plotters without its font and bitmap features. Its SVG backend writes
//! text as `<text>` elements that the viewer lays out, so no font file is read or
//! needed; label sizes are estimated for the layout only. Every function returns a
//! complete SVG document even for empty or all-NaN input (the title and an empty
//! frame), so a caller can always write the file.

use plotters::coord::Shift;
use plotters::prelude::*;

/// Pixel size of one chart (or of one panel of a [`bar_chart`]).
const SIZE: (u32, u32) = (720, 400);

/// Colours of successive series (matplotlib's tab10, which stays readable in print).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A series to draw: its legend name, its line style and its `(x, y)` points.
type Styled<'a> = (&'a str, ShapeStyle, &'a [(f64, f64)]);

/// Draws into a fresh SVG of `size` pixels; a drawing error (which the string backend
/// does not produce in practice) is logged and leaves a frame with the title only.
fn render(
    title: &str,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
) -> String {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => {
            if !svg.ends_with('\n') {
                svg.push('\n');
            }
            svg
        }
        Err(e) => {
            tracing::warn!("plot {title:?}: {e}");
            empty_svg(title, size)
        }
    }
}

/// A frame with only the title: what a chart with nothing to draw shows.
fn empty_svg(title: &str, size: (u32, u32)) -> String {
    render_frame(title, size).unwrap_or_else(|_| {
        // Plain text fallback; cannot fail.
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}"><text x="8" y="20">{}</text></svg>"#,
            size.0,
            size.1,
            title
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ) + "\n"
    })
}

fn render_frame(title: &str, size: (u32, u32)) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        root.titled(title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    svg.push('\n');
    Ok(svg)
}

/// `(low, high)` of `values` widened by 5% (and to a non-empty span), or `None` when
/// no value is finite.
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * 0.05)
        .max(hi.abs().max(lo.abs()) * 1e-6)
        .max(1e-9);
    Some((lo - pad, hi + pad))
}

/// Line chart of several named series of `(x, y)` points, each in its own colour with
/// a legend. Points with a non-finite coordinate are skipped (a NaN loss leaves a gap
/// in the data, not in the file); a series with no finite point is left out. With
/// nothing to draw the SVG holds the title only.
pub fn line_chart(title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let styled: Vec<Styled<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| {
            (
                *name,
                PALETTE[i % PALETTE.len()].stroke_width(2),
                pts.as_slice(),
            )
        })
        .collect();
    lines(title, x_label, &styled)
}

/// The drawing behind [`line_chart`] and [`loss_svg`]: series with their own styles.
fn lines(title: &str, x_label: &str, series: &[Styled<'_>]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all = || series.iter().flat_map(|s| s.2.iter().filter(finite));
    let (Some(xs), Some(ys)) = (span(all().map(|p| p.0)), span(all().map(|p| p.1))) else {
        return empty_svg(title, SIZE);
    };
    render(title, SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (name, style, pts) in series {
            let pts: Vec<(f64, f64)> = pts.iter().filter(finite).copied().collect();
            if pts.is_empty() {
                continue;
            }
            let legend = *style;
            chart
                .draw_series(LineSeries::new(pts, *style))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], legend));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

/// SVG of `points` (step, loss): the raw losses and their moving average over the last
/// `window` points (at least 1). Non-finite losses are skipped.
pub fn loss_svg(title: &str, points: &[(usize, f64)], window: usize) -> String {
    let raw: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let window = window.max(1);
    let smooth: Vec<(f64, f64)> = (0..raw.len())
        .map(|i| {
            let span = &raw[i.saturating_sub(window - 1)..=i];
            (
                raw[i].0,
                span.iter().map(|p| p.1).sum::<f64>() / span.len() as f64,
            )
        })
        .collect();
    let avg = format!("mean of {window}");
    lines(
        title,
        "step",
        &[
            ("loss", RGBColor(158, 202, 225).stroke_width(1), &raw),
            (&avg, RGBColor(8, 81, 156).stroke_width(2), &smooth),
        ],
    )
}

/// One panel of a [`bar_chart`]: a value per (series, group), e.g. the mean score of
/// each system (series) in each prompt category (group) under one scorer.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    /// The panel's title (the scorer's name).
    pub title: String,
    /// Group names along the x axis, in order (the categories).
    pub groups: Vec<String>,
    /// `(series name, one value per group)`; a non-finite value (or a missing one, when
    /// the list is short) draws no bar.
    pub series: Vec<(String, Vec<f64>)>,
}

/// Grouped bar chart: one panel per [`Bars`], stacked vertically under `title`, with
/// the series side by side in each group, bars drawn from zero (so negative scores,
/// as ImageReward gives, point down), and a legend of the series. With no panels the
/// SVG holds the title only.
pub fn bar_chart(title: &str, panels: &[Bars]) -> String {
    if panels.is_empty() {
        return empty_svg(title, SIZE);
    }
    let size = (SIZE.0, 40 + SIZE.1 * panels.len() as u32);
    render(title, size, |root| {
        let body = root.titled(title, ("sans-serif", 20))?;
        for (panel, area) in panels.iter().zip(body.split_evenly((panels.len(), 1))) {
            draw_bars(&area, panel)?;
        }
        Ok(())
    })
}

fn draw_bars(area: &DrawingArea<SVGBackend<'_>, Shift>, panel: &Bars) -> DrawResult {
    let values = panel.series.iter().flat_map(|s| s.1.iter().copied());
    let (lo, hi) = span(values.chain([0.0])).unwrap_or((-1.0, 1.0));
    let groups = panel.groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups as f64, lo..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let n = panel.series.len().max(1) as f64;
    let width = 0.8 / n;
    for (s, (name, vals)) in panel.series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .take(panel.groups.len())
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(g, v)| {
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, *v)], colour.filled())
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (groups as f64, 0.0)],
        BLACK.stroke_width(1),
    )))?;
    // Group names under the axis, centred on their group, in pixel coordinates.
    let style = TextStyle::from(("sans-serif", 13)).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Top,
    ));
    for (g, name) in panel.groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, lo));
        let (ox, oy) = area.get_base_pixel();
        area.draw(&Text::new(
            name.as_str(),
            (x - ox, y - oy + 6),
            style.clone(),
        ))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SVG is one well-formed document: one root, balanced `<svg>`, no NaN drawn.
    fn assert_svg(svg: &str) {
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(!svg.contains("NaN"), "{svg}");
    }

    /// The contents of every `<text>` element, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (_, rest) = t.split_once('>')?;
                Some(rest.split("</text>").next()?.trim().to_string())
            })
            .collect()
    }

    /// Polylines drawn in `colour` (`#RRGGBB`, as plotters writes it).
    fn lines_in(svg: &str, colour: &str) -> usize {
        svg.matches(&format!(
            r#"<polyline fill="none" opacity="1" stroke="{colour}""#
        ))
        .count()
    }

    #[test]
    fn loss_draws_both_curves_and_survives_nan_and_empty_input() {
        let svg = loss_svg(
            "loss <x>",
            &[(0, 2.0), (1, f64::NAN), (2, 1.0), (3, 0.5)],
            2,
        );
        assert_svg(&svg);
        // Each curve once, and once more as its legend mark.
        assert_eq!(lines_in(&svg, "#9ECAE1"), 2, "{svg}");
        assert_eq!(lines_in(&svg, "#08519C"), 2, "{svg}");
        let t = texts(&svg);
        for want in ["loss &lt;x&gt;", "loss", "mean of 2", "step"] {
            assert!(t.iter().any(|x| x == want), "{want}: {t:?}");
        }
        let empty = loss_svg("empty", &[], 5);
        assert_svg(&empty);
        assert_eq!(texts(&empty), ["empty"]);
    }

    #[test]
    fn line_chart_names_every_series_and_skips_non_finite_points() {
        let svg = line_chart(
            "PPO & KL",
            "step",
            &[
                ("reward", vec![(0.0, 0.1), (1.0, f64::NAN), (2.0, 0.3)]),
                ("kl", vec![(0.0, 0.0), (f64::INFINITY, 1.0), (2.0, 0.02)]),
                ("all nan", vec![(0.0, f64::NAN)]),
            ],
        );
        assert_svg(&svg);
        let t = texts(&svg);
        for want in ["PPO &amp; KL", "reward", "kl", "step"] {
            assert!(t.iter().any(|x| x == want), "{want}: {t:?}");
        }
        assert!(
            !t.iter().any(|x| x == "all nan"),
            "a series with no finite point has no legend"
        );
        // Two finite points per drawn series: the skipped ones leave no vertex.
        let reward = svg
            .split(r##"stroke="#1F77B4" stroke-width="2" points=""##)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert_eq!(reward.split_whitespace().count(), 2, "{reward}");
        for empty in [
            line_chart("nothing", "x", &[]),
            line_chart("nan", "x", &[("a", vec![(f64::NAN, 1.0)])]),
        ] {
            assert_svg(&empty);
            assert!(!empty.contains("<polyline"));
            assert_eq!(texts(&empty).len(), 1);
        }
    }

    #[test]
    fn bar_chart_has_a_bar_per_value_and_every_name() {
        let groups: Vec<String> = ["anime", "concept-art", "paintings", "photo", "average"]
            .map(String::from)
            .to_vec();
        let panel = |title: &str| Bars {
            title: title.into(),
            groups: groups.clone(),
            series: vec![
                (
                    "no refinement".into(),
                    vec![0.038, 0.185, 0.190, 0.130, 0.136],
                ),
                ("PRIP".into(), vec![0.346, -0.443, f64::NAN, 0.252, 0.05]),
            ],
        };
        let svg = bar_chart("scores", &[panel("imagereward"), panel("hpsv2")]);
        assert_svg(&svg);
        let t = texts(&svg);
        for name in [
            "scores",
            "imagereward",
            "hpsv2",
            "no refinement",
            "PRIP",
            "concept-art",
            "average",
        ] {
            assert!(t.iter().any(|x| x == name), "{name}: {t:?}");
        }
        // Per panel: 5 bars of the first series, 4 of the second (one NaN), and one
        // legend mark each.
        let bars = |colour: &str| {
            svg.matches(&format!(r#"opacity="1" fill="{colour}" stroke="none"/>"#))
                .count()
        };
        assert_eq!(bars("#1F77B4"), 2 * (5 + 1), "{svg}");
        assert_eq!(bars("#FF7F0E"), 2 * (4 + 1), "{svg}");
        let empty = bar_chart("no data", &[]);
        assert_svg(&empty);
        assert_eq!(texts(&empty), ["no data"]);
    }
}
