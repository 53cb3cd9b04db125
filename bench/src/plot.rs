//! The PNG of latency over time (p50, p99, max per second), drawn with
//! plotters; the DejaVu font is registered once, before any text is drawn.
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::timeline::Point;

static FONT: Once = Once::new();

/// A named line: its colour and how to read its value from a point.
type Series = (&'static str, RGBColor, fn(&Point) -> f64);

fn register_font() {
    FONT.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let _ = plotters::style::register_font("sans-serif", style, dejavu::sans::regular());
        }
    });
}

/// Draws `points` into a PNG at `path`.
pub fn latency_png(path: &Path, title: &str, points: &[Point]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = points.iter().map(|p| p.second + 1).max().unwrap_or(1) as f64;
    let y_max = points
        .iter()
        .map(|p| p.p99_ms.max(p.p50_ms))
        .fold(1.0_f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 16))
        .draw()?;
    let series: [Series; 2] = [("p50", BLUE, |p| p.p50_ms), ("p99", RED, |p| p.p99_ms)];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.second as f64, f(p))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    // max can dwarf the rest: drawn clipped to the axis, as a thin line.
    chart
        .draw_series(LineSeries::new(
            points
                .iter()
                .map(|p| (p.second as f64, p.max_ms.min(y_max))),
            BLACK.mix(0.4),
        ))?
        .label("max (clipped)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let points: Vec<Point> = (0..10)
            .map(|s| Point {
                second: s,
                count: 100,
                p50_ms: 1.0 + s as f64 * 0.1,
                p99_ms: 5.0,
                max_ms: 50.0,
            })
            .collect();
        latency_png(&path, "test", &points).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
