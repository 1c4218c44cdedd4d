//! The PNG of `kvmesh bench`: TTFT over the run (one point per request, by send time) and
//! the TTFT and inter-token-latency CDFs, one colour per target. Needs the `plot` feature
//! (on by default); without it the run says so and writes the tables only.

use std::path::Path;

use super::report::Report;

/// Draws `reports` to `path`.
#[cfg(not(feature = "plot"))]
pub fn draw(_path: &Path, _title: &str, _reports: &[Report]) -> Result<(), String> {
    Err("this kvmesh was built without the `plot` feature; rebuild with `--features plot` for the PNG".into())
}

/// Draws `reports` to `path`.
#[cfg(feature = "plot")]
pub fn draw(path: &Path, title: &str, reports: &[Report]) -> Result<(), String> {
    use plotters::prelude::*;

    use crate::png_canvas::{register_font, write_png, FONT};

    const WIDTH: u32 = 1800;
    const HEIGHT: u32 = 600;
    let err = |e: &dyn std::fmt::Debug| format!("{e:?}");
    register_font()?;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (head, body) = root.split_vertically(50);
        head.draw(&Text::new(
            title.to_string(),
            (20, 14),
            (FONT, 22).into_font(),
        ))
        .map_err(|e| err(&e))?;
        let panels = body.split_evenly((1, 3));

        // TTFT over time.
        let t_max = reports
            .iter()
            .flat_map(|r| r.ttft_series.iter().map(|p| p.0))
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let y_max = reports
            .iter()
            .flat_map(|r| r.ttft_series.iter().map(|p| p.1 * 1e3))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("TTFT by send time", (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..t_max * 1.02, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("TTFT (ms)")
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, r) in reports.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(
                    r.ttft_series
                        .iter()
                        .map(|&(t, v)| Circle::new((t, v * 1e3), 3, color.filled())),
                )
                .map_err(|e| err(&e))?
                .label(r.target.clone())
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| err(&e))?;

        // The CDFs.
        let cdf_panel = |area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
                         caption: &str,
                         series: Vec<Vec<f64>>|
         -> Result<(), String> {
            let x_max = series
                .iter()
                .flatten()
                .fold(0.0f64, |a, &b| a.max(b))
                .max(1.0)
                * 1.05;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max, 0.0..1.0)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("milliseconds")
                .y_desc("fraction of requests")
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, mut values) in series.into_iter().enumerate() {
                values.sort_by(f64::total_cmp);
                let n = values.len().max(1) as f64;
                let points: Vec<(f64, f64)> = values
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| (v, (k + 1) as f64 / n))
                    .collect();
                let line = PathElement::new(points, Palette99::pick(i).stroke_width(2));
                chart
                    .draw_series(std::iter::once(line))
                    .map_err(|e| err(&e))?;
            }
            Ok(())
        };
        cdf_panel(
            &panels[1],
            "TTFT CDF",
            reports
                .iter()
                .map(|r| r.ttft_series.iter().map(|p| p.1 * 1e3).collect())
                .collect(),
        )?;
        cdf_panel(
            &panels[2],
            "inter-token latency CDF",
            reports
                .iter()
                .map(|r| r.itls.iter().map(|v| v * 1e3).collect())
                .collect(),
        )?;
        root.present().map_err(|e| err(&e))?;
    }
    write_png(path, &buf, WIDTH, HEIGHT).map_err(|e| format!("{e:?}"))
}
