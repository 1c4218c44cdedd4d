//! The PNG of `kvmesh sim --compare`: four panels, one bar (group) per policy.
//!
//! Built with the `plot` feature (on by default): plotters' bitmap backend draws into a
//! buffer, the `png` crate encodes it, and text is rendered with ab_glyph from DejaVu Sans,
//! embedded by the `dejavu` crate, so no system font or fontconfig is needed (a fresh machine
//! or container draws the same picture). Without the feature [`draw`] returns
//! [`PlotError::NotCompiled`] and the table is still printed.
//!
//! Panels: block hit ratio with the ideal as a line; time to first token p50 / p90 / p99;
//! load imbalance (max / mean busy time) with 1.0 as a line; end-to-end latency p50 / p90 /
//! p99.

use std::fmt;
use std::path::Path;

use kvmesh_sim::Workload;

use super::Run;

/// Whether this binary can draw.
pub(super) const AVAILABLE: bool = cfg!(feature = "plot");

/// Why no plot was written.
#[derive(Debug)]
#[non_exhaustive]
pub(super) enum PlotError {
    /// Built without the `plot` feature.
    NotCompiled,
    /// The drawing library failed.
    #[cfg_attr(not(feature = "plot"), allow(dead_code))]
    Draw(String),
    /// The file could not be written.
    #[cfg_attr(not(feature = "plot"), allow(dead_code))]
    Io(std::io::Error),
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::NotCompiled => write!(
                f,
                "this kvmesh was built without the `plot` feature; rebuild with \
                 `cargo build --release -p kvmesh --features plot` to draw --compare's PNG"
            ),
            PlotError::Draw(m) => write!(f, "drawing failed: {m}"),
            PlotError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PlotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlotError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Draws the comparison of `runs` to `path`.
#[cfg(not(feature = "plot"))]
pub(super) fn draw(
    _path: &Path,
    _workload: &Workload,
    _runs: &[Run],
    _capacity: &str,
) -> Result<(), PlotError> {
    Err(PlotError::NotCompiled)
}

/// Draws the comparison of `runs` to `path`.
#[cfg(feature = "plot")]
pub(super) fn draw(
    path: &Path,
    workload: &Workload,
    runs: &[Run],
    capacity: &str,
) -> Result<(), PlotError> {
    imp::draw(path, workload, runs, capacity)
}

#[cfg(feature = "plot")]
mod imp {
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    use super::{PlotError, Run, Workload};
    use crate::png_canvas::{register_font, write_png, FONT};

    fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
        PlotError::Draw(format!("{e:?}"))
    }

    const WIDTH: u32 = 1400;
    const HEIGHT: u32 = 1000;
    /// x units per policy: three bars of 2 and a gap of 1; labels sit at the centre, 3.
    const GROUP: i32 = 7;

    struct Panel<'a> {
        title: &'a str,
        y_desc: &'a str,
        /// One value per policy, or three (p50, p90, p99).
        values: Vec<Vec<f64>>,
        /// A horizontal reference line and its legend text.
        reference: Option<(f64, &'a str)>,
    }

    pub(super) fn draw(
        path: &Path,
        workload: &Workload,
        runs: &[Run],
        capacity: &str,
    ) -> Result<(), PlotError> {
        register_font().map_err(PlotError::Draw)?;
        let names: Vec<&str> = runs.iter().map(|r| r.report.policy.as_str()).collect();
        let ideal = runs
            .first()
            .map_or(0.0, |r| r.report.hits.ideal_block_hit_ratio);
        let panels = [
            Panel {
                title: "block hit ratio",
                y_desc: "hit blocks / prompt blocks",
                values: runs
                    .iter()
                    .map(|r| vec![r.report.hits.block_hit_ratio])
                    .collect(),
                reference: Some((ideal, "ideal (one infinite global cache)")),
            },
            Panel {
                title: "time to first token",
                y_desc: "seconds",
                values: runs
                    .iter()
                    .map(|r| vec![r.report.ttft.p50, r.report.ttft.p90, r.report.ttft.p99])
                    .collect(),
                reference: None,
            },
            Panel {
                title: "load imbalance",
                y_desc: "max / mean busy time",
                values: runs.iter().map(|r| vec![r.report.load.imbalance]).collect(),
                reference: Some((1.0, "perfect balance")),
            },
            Panel {
                title: "end-to-end latency",
                y_desc: "seconds",
                values: runs
                    .iter()
                    .map(|r| vec![r.report.e2e.p50, r.report.e2e.p90, r.report.e2e.p99])
                    .collect(),
                reference: None,
            },
        ];

        let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let (head, body) = root.split_vertically(70);
            let workers = runs.first().map_or(0, |r| r.report.workers);
            head.draw(&Text::new(
                format!("kvmesh sim --compare: {}", workload.name()),
                (20, 12),
                (FONT, 22).into_font(),
            ))
            .map_err(draw_err)?;
            head.draw(&Text::new(
                format!(
                    "{} requests, {}-token blocks, {workers} workers, {capacity}",
                    workload.len(),
                    workload.block_size()
                ),
                (20, 42),
                (FONT, 18).into_font().color(&RGBColor(80, 80, 80)),
            ))
            .map_err(draw_err)?;
            let areas = body.split_evenly((2, 2));
            for (area, panel) in areas.iter().zip(&panels) {
                draw_panel(area, panel, &names)?;
            }
            root.present().map_err(draw_err)?;
        }
        write_png(path, &buf, WIDTH, HEIGHT).map_err(|e| match e {
            crate::png_canvas::PngError::Io(e) => PlotError::Io(e),
            crate::png_canvas::PngError::Encode(m) => PlotError::Draw(m),
        })
    }

    fn draw_panel<DB: DrawingBackend>(
        area: &DrawingArea<DB, plotters::coord::Shift>,
        panel: &Panel<'_>,
        names: &[&str],
    ) -> Result<(), PlotError> {
        let n = names.len() as i32;
        let top = panel
            .values
            .iter()
            .flatten()
            .copied()
            .chain(panel.reference.map(|(v, _)| v))
            .fold(0.0f64, f64::max);
        let y_max = if top > 0.0 { top * 1.2 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0..n * GROUP, 0.0..y_max)
            .map_err(draw_err)?;
        let label = |x: &i32| {
            if x.rem_euclid(GROUP) == 3 {
                names
                    .get((x / GROUP) as usize)
                    .map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels((n * GROUP) as usize + 1)
            .x_label_formatter(&label)
            .y_desc(panel.y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(draw_err)?;

        let grouped = panel.values.first().is_some_and(|v| v.len() > 1);
        if grouped {
            const SHADES: [RGBColor; 3] = [
                RGBColor(120, 170, 220),
                RGBColor(40, 110, 190),
                RGBColor(10, 50, 110),
            ];
            for (k, (shade, name)) in SHADES.iter().zip(["p50", "p90", "p99"]).enumerate() {
                let bars = panel.values.iter().enumerate().map(|(i, v)| {
                    let x0 = i as i32 * GROUP + 2 * k as i32;
                    Rectangle::new([(x0, 0.0), (x0 + 2, v[k])], shade.filled())
                });
                chart
                    .draw_series(bars)
                    .map_err(draw_err)?
                    .label(name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], shade.filled())
                    });
            }
        } else {
            let bars = panel.values.iter().enumerate().map(|(i, v)| {
                let x0 = i as i32 * GROUP + 1;
                Rectangle::new([(x0, 0.0), (x0 + 4, v[0])], Palette99::pick(i).filled())
            });
            chart.draw_series(bars).map_err(draw_err)?;
            // Value labels centred above single bars.
            let style =
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            let texts = panel.values.iter().enumerate().map(|(i, v)| {
                Text::new(
                    format!("{:.3}", v[0]),
                    (i as i32 * GROUP + 3, v[0] + y_max * 0.01),
                    style.clone(),
                )
            });
            chart.draw_series(texts).map_err(draw_err)?;
        }
        if let Some((y, text)) = panel.reference {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0, y), (n * GROUP, y)],
                    RED.stroke_width(2),
                )))
                .map_err(draw_err)?
                .label(text)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], RED.stroke_width(2)));
        }
        if grouped || panel.reference.is_some() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(draw_err)?;
        }
        Ok(())
    }
}
