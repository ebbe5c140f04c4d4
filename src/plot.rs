//! Plots for reports, each written as SVG and PNG.
//!
//! Text in the PNG is drawn with a bundled font (DejaVu Sans, `assets/fonts`), so plots look
//! the same on a bare machine without system fonts. The SVG names the font and lets the viewer
//! draw the text.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{LopperError, Result};
use crate::fsutil::write_atomic;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bundled file is a valid TrueType font; a failure here is a build defect, and
        // the PNG then has no text rather than the run failing.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(e: impl std::fmt::Display) -> LopperError {
    LopperError::Plot(e.to_string())
}

/// A chart that can draw itself on any plotters backend.
trait Chart {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Writes `chart` to `<stem>.svg` and `<stem>.png`; returns both paths.
fn write_chart(chart: &impl Chart, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let (w, h) = chart.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| plot_err("the bitmap has the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(plot_err)?;
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");
    write_atomic(&svg_path, svg.as_bytes())?;
    write_atomic(&png_path, png.get_ref())?;
    Ok([svg_path, png_path])
}

/// Horizontal bars, one per labelled item, of values in [0, 1] (keep ratios).
pub struct RatioBars {
    pub title: String,
    pub x_label: String,
    pub items: Vec<(String, f64)>,
}

impl RatioBars {
    /// Writes `<stem>.svg` and `<stem>.png`.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2]> {
        write_chart(self, stem)
    }
}

/// Cuts long labels (residual groups list many producers) to keep the label column narrow.
fn short(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let cut: String = label.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

impl Chart for RatioBars {
    fn size(&self) -> (u32, u32) {
        (900, 120 + 22 * self.items.len().max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_err)?;
        let n = self.items.len();
        let labels: Vec<String> = self.items.iter().map(|(l, _)| short(l, 40)).collect();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(300)
            .build_cartesian_2d(0f64..1.0, (0..n).into_segmented())
            .map_err(plot_err)?;
        let fmt = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n.max(1))
            .y_label_formatter(&fmt)
            .x_desc(&self.x_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(self.items.iter().enumerate().map(|(i, (_, v))| {
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (v.clamp(0.0, 1.0), SegmentValue::Exact(i + 1)),
                    ],
                    BLUE.mix(0.6).filled(),
                )
            }))
            .map_err(plot_err)?;
        Ok(())
    }
}

/// Lines of y over x, one per named series (keep ratios over epochs).
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Lines {
    /// Writes `<stem>.svg` and `<stem>.png`.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2]> {
        write_chart(self, stem)
    }
}

impl Chart for Lines {
    fn size(&self) -> (u32, u32) {
        (1000, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_err)?;
        let points = self.series.iter().flat_map(|(_, p)| p.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let s = chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(plot_err)?;
            if self.series.len() <= 16 {
                s.label(short(name, 28)).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            }
        }
        if self.series.len() <= 16 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}
