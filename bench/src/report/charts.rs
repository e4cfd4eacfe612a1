//! SVG charts (plotters, SVG backend only): start-time distributions, memory per instance,
//! density and bytes on disk per system. Log scales, since containers and VMs differ by orders of
//! magnitude.

use std::path::Path;

use plotters::prelude::*;

use super::Report;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 520;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Err = String;

/// Picks one measure's samples out of a system's start stats.
type SampleOf = fn(&super::StartStats) -> &[f64];

fn e(x: impl std::fmt::Display) -> Err {
    x.to_string()
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| *v > 0.0 && v.is_finite()).fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    if hi <= 0.0 { (0.1, 10.0) } else { (lo / 2.0, hi * 2.0) }
}

/// The chart every figure uses: one slot per category along x, labelled in its middle, and a log
/// scale from `lo` to `hi` along y; its mesh is drawn.
fn category_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    cats: &[String],
    (lo, hi): (f64, f64),
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, LogCoord<f64>>>, Err> {
    let n = cats.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 { cats.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .y_desc(unit)
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// One series of grouped values per category (bars side by side), log scale.
fn bars(path: &Path, title: &str, unit: &str, categories: &[String], series: &[(&str, Vec<f64>)]) -> Result<(), Err> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (lo, hi) = log_range(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut chart = category_chart(&root, title, unit, categories, (lo, hi))?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let rects = values.iter().enumerate().filter(|(_, v)| **v > 0.0 && v.is_finite()).map(move |(i, v)| {
            let x0 = i as f64 + 0.1 + s as f64 * width;
            Rectangle::new([(x0, lo), (x0 + width * 0.9, *v)], color.filled())
        });
        chart
            .draw_series(rects)
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)
}

/// Every sample as a dot per system, log scale, one colour per measure.
fn start_chart(path: &Path, r: &Report) -> Result<(), Err> {
    let rows: Vec<_> =
        r.start.iter().filter_map(|row| row.outcome.measured().map(|s| (row.system.clone(), s))).collect();
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let range = log_range(
        rows.iter().flat_map(|(_, s)| s.true_exit.ms.iter().chain(&s.first_byte.ms).chain(&s.http_answer.ms).copied()),
    );
    let cats: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = category_chart(&root, "Start time per run (each dot one run)", "ms", &cats, range)?;
    let measures: [(&str, SampleOf, f64); 3] = [
        ("/bin/true: start → exit", |s| &s.true_exit.ms, 0.25),
        ("echo: start → first byte", |s| &s.first_byte.ms, 0.5),
        ("HTTP server: start → first answer", |s| &s.http_answer.ms, 0.75),
    ];
    for (m, (label, get, offset)) in measures.iter().enumerate() {
        let color = COLORS[m];
        let dots: Vec<_> = rows
            .iter()
            .enumerate()
            .flat_map(|(i, (_, s))| {
                let k = get(s).len().max(1) as f64;
                get(s).iter().enumerate().map(move |(j, v)| (i as f64 + offset + (j as f64 / k - 0.5) * 0.15, *v))
            })
            .filter(|(_, v)| *v > 0.0)
            .map(|p| Circle::new(p, 3, color.filled()))
            .collect();
        chart
            .draw_series(dots)
            .map_err(e)?
            .label(*label)
            .legend(move |(x, y)| Circle::new((x + 5, y), 4, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)
}

/// Writes start.svg, memory.svg, density.svg and images.svg into `dir`.
pub fn write_all(dir: &Path, r: &Report) -> Result<(), Err> {
    start_chart(&dir.join("start.svg"), r)?;

    let mem: Vec<_> = r.memory.iter().filter_map(|m| m.outcome.measured().map(|f| (m.system.clone(), *f))).collect();
    bars(
        &dir.join("memory.svg"),
        "Memory per running instance",
        "MiB",
        &mem.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        &[
            ("RSS", mem.iter().map(|(_, f)| f.rss_kib as f64 / 1024.0).collect()),
            ("PSS", mem.iter().map(|(_, f)| f.pss_kib as f64 / 1024.0).collect()),
        ],
    )?;

    let dens: Vec<_> = r.density.iter().filter_map(|d| d.outcome.measured().map(|f| (d.system.clone(), *f))).collect();
    bars(
        &dir.join("density.svg"),
        "Density: per instance, N at once",
        "ms / MiB",
        &dens.iter().map(|(n, f)| format!("{n}, {} ready", f.ready)).collect::<Vec<_>>(),
        &[
            (
                "time to all ready / instance (ms)",
                dens.iter().map(|(_, f)| f.all_ready_ms / f.ready.max(1) as f64).collect(),
            ),
            (
                "PSS / instance (MiB)",
                dens.iter().map(|(_, f)| f.total.pss_kib as f64 / 1024.0 / f.ready.max(1) as f64).collect(),
            ),
        ],
    )?;

    let img: Vec<_> = r.images.iter().filter_map(|i| i.outcome.measured().map(|f| (i.system.clone(), *f))).collect();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    bars(
        &dir.join("images.svg"),
        "Application set: bytes on disk and to transfer",
        "MiB",
        &img.iter()
            .map(|(n, _)| n.replace("strata store, ", "store: ").replace(" on a shared backing file", ""))
            .collect::<Vec<_>>(),
        &[
            ("on disk", img.iter().map(|(_, f)| mib(f.on_disk)).collect()),
            ("to transfer", img.iter().map(|(_, f)| mib(f.transfer)).collect()),
        ],
    )
}
