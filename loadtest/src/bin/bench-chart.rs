//! `bench-chart RESULTS.json OUT.svg`: draws what `make bench` measured as
//! one SVG: throughput bars of the service beside its references (COPY,
//! nginx), and the latency percentiles of the service against nginx.
//!
//! The input is written by loadtest/bench.sh:
//! `{"title": "...", "throughput": [{"label", "value", "reference"}],
//!   "latency": {"title": "...", "percentiles": ["p50", ...],
//!               "series": [{"label", "ms": [..]}]}}`

use plotters::prelude::*;
use serde::Deserialize;
use std::process::ExitCode;

#[derive(Deserialize)]
struct Results {
    title: String,
    throughput: Vec<Bar>,
    latency: Latencies,
}

#[derive(Deserialize)]
struct Bar {
    label: String,
    /// Orders, rows or requests per second.
    value: f64,
    /// A reference (COPY, nginx) rather than the service.
    #[serde(default)]
    reference: bool,
}

#[derive(Deserialize)]
struct Latencies {
    title: String,
    percentiles: Vec<String>,
    series: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    label: String,
    /// Milliseconds, one per percentile (null where not measured).
    ms: Vec<Option<f64>>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: bench-chart RESULTS.json OUT.svg");
        return ExitCode::from(2);
    };
    let results = match std::fs::read(input)
        .map_err(|e| format!("cannot read {input}: {e}"))
        .and_then(|bytes| {
            serde_json::from_slice::<Results>(&bytes).map_err(|e| format!("{input}: {e}"))
        }) {
        Ok(results) => results,
        Err(message) => {
            eprintln!("bench-chart: {message}");
            return ExitCode::from(2);
        }
    };
    match draw(&results, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-chart: {message}");
            ExitCode::FAILURE
        }
    }
}

const SERVICE: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(150, 150, 150);
const LINES: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

fn draw(results: &Results, output: &str) -> Result<(), String> {
    let bars = results.throughput.len().max(1);
    let height = 140 + 26 * bars as u32 + 380;
    let root = SVGBackend::new(output, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&results.title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(100 + 26 * bars as u32);
    throughput(&top, &results.throughput)?;
    latency(&bottom, &results.latency)?;
    root.present().map_err(|e| e.to_string())
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[Bar],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let max = bars.iter().map(|b| b.value).fold(1.0, f64::max) * 1.18;
    let n = bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput per second (blue: the service, grey: its reference)",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..max, 0.0..n as f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            // A label at each bar's centre (n - i - 0.5, first bar on top).
            let slot = n as f64 - y - 0.5;
            let i = slot.round();
            if (slot - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                bars[i as usize].label.clone()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let y = (n - i) as f64;
            let color = if bar.reference { REFERENCE } else { SERVICE };
            Rectangle::new([(0.0, y - 0.85), (bar.value, y - 0.15)], color.filled())
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let y = (n - i) as f64 - 0.5;
            Text::new(
                format!("{:.0}", bar.value),
                (bar.value + max * 0.01, y + 0.2),
                ("sans-serif", 12),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    latency: &Latencies,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let values = latency
        .series
        .iter()
        .flat_map(|s| s.ms.iter().flatten().copied());
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (low, high) = if low > high {
        (0.1, 10.0)
    } else {
        ((low / 2.0).max(0.001), high * 2.0)
    };
    let points = latency.percentiles.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(&latency.title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3..(points as f64 - 0.7), (low..high).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(points * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < points {
                latency.percentiles[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("milliseconds (log scale)")
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (series, color) in latency.series.iter().zip(LINES.iter().cycle()) {
        let points: Vec<(f64, f64)> = series
            .ms
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(&series.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
