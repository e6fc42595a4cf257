//! Line charts as inline SVG (plotters, SVG backend: text is SVG `<text>`, no system fonts):
//! axes with ticks, tick labels and units, one path per series, the legend beside the plot
//! (never over the data). Used by the validation report.

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of a chart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) x: &'a [f64],
    pub(crate) y: &'a [f64],
    /// Drawn faint (a fine-grained series under coarser means).
    pub(crate) light: bool,
}

impl<'a> Series<'a> {
    pub(crate) fn new(name: &'a str, x: &'a [f64], y: &'a [f64]) -> Self {
        Self {
            name,
            x,
            y,
            light: false,
        }
    }
}

/// A chart: title, axis labels with units, its lines.
#[derive(Debug, Clone)]
pub(crate) struct LineChart<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) series: Vec<Series<'a>>,
}

/// Line colours, in series order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x22, 0x22, 0x22),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

const WIDTH: u32 = 960;
const HEIGHT: u32 = 300;
const LEGEND_W: u32 = 170;

/// The finite range of values, padded by 4 % (a constant gets ±1).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        return (lo - 1.0, hi + 1.0);
    }
    let pad = 0.04 * (hi - lo);
    (lo - pad, hi + pad)
}

/// The chart as an `<svg>` element.
pub(crate) fn line_chart_svg(chart: &LineChart) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| Error::data(format!("chart {:?}: {e}", chart.title));
    let (x0, x1) = range(chart.series.iter().flat_map(|s| s.x.iter().copied()));
    let (y0, y1) = range(chart.series.iter().flat_map(|s| s.y.iter().copied()));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_W);
        let mut c = ChartBuilder::on(&plot_area)
            .caption(chart.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(38)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .x_labels(10)
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, s) in chart.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let style = if s.light {
                colour.mix(0.3).stroke_width(1)
            } else {
                colour.stroke_width(1)
            };
            let points =
                s.x.iter()
                    .zip(s.y)
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|(&x, &y)| (x, y));
            c.draw_series(LineSeries::new(points, style))
                .map_err(|e| err(&e))?;
        }
        for (k, s) in chart.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let y = 40 + 20 * k as i32;
            let swatch = if s.light {
                colour.mix(0.3).filled()
            } else {
                colour.filled()
            };
            legend_area
                .draw(&Rectangle::new([(8, y - 5), (28, y + 5)], swatch))
                .map_err(|e| err(&e))?;
            legend_area
                .draw(&Text::new(
                    s.name.to_string(),
                    (34, y - 7),
                    ("sans-serif", 13).into_font().color(&BLACK),
                ))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    // The XML declaration-free element embeds in HTML as is.
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_ticks_on_both_axes_one_path_per_series_and_a_side_legend() {
        let x: Vec<f64> = (0..100).map(|i| i as f64 * 0.25).collect();
        let a: Vec<f64> = x.iter().map(|t| 300.0 + 50.0 * t.sin()).collect();
        let mut b: Vec<f64> = x.iter().map(|t| 310.0 + 40.0 * t.cos()).collect();
        b[10] = f64::NAN; // a gap, not a failure
        let svg = line_chart_svg(&LineChart {
            title: "Power",
            x_label: "time since start (s)",
            y_label: "power (W)",
            series: vec![
                Series::new("measured", &x, &a),
                Series::new("powersynth", &x, &b),
            ],
        })
        .unwrap();
        // Axis lines and tick marks are black polylines; each series is one path of its colour.
        let series_paths = svg
            .split("<polyline")
            .skip(1)
            .filter(|p| !p.contains("stroke=\"#000000\""))
            .count();
        assert_eq!(series_paths, 2, "one path per series");
        assert!(
            svg.matches("stroke=\"#000000\"").count() >= 8,
            "axes and tick marks"
        );
        for label in [
            "time since start (s)",
            "power (W)",
            "measured",
            "powersynth",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // Tick labels: numbers along x (0 … 24 s) and along y (250 … 350 W).
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1))
            .map(|t| t.split('<').next().unwrap_or("").trim())
            .collect();
        let numbers: Vec<f64> = texts.iter().filter_map(|t| t.parse().ok()).collect();
        assert!(numbers.iter().any(|&v| v > 15.0 && v < 25.0), "{texts:?}");
        assert!(numbers.iter().any(|&v| v > 250.0 && v < 360.0), "{texts:?}");
        assert!(numbers.len() >= 8, "{texts:?}");
    }
}
