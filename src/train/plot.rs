//! Training-loss plot, rendered straight to PNG bytes.
//!
//! The image (800x500 RGB, white background) shows loss on the y axis against the optimizer
//! step on the x axis, one line per [`Series`]: typically the per-step training loss in blue and
//! the periodic evaluation loss in orange with dot markers. Both axes carry "nice" ticks
//! (1, 2 or 5 x 10^k) with grid lines and numeric labels; a title sits on top and a legend box
//! names each series, placed in the corner of the plot that hides the fewest points.
//!
//! Everything is rasterized here: curves are anti-aliased through a per-series coverage mask
//! and text comes from an embedded 5x7 bitmap font drawn at 2x, so the only dependency is the
//! `png` encoder. NaN, infinite and absurdly large (beyond 1e100) points are skipped (they break the line),
//! a single point or a flat curve gets a padded range, and empty input still draws the axes
//! with a "no data" note.

use std::io;
use std::path::Path;

/// Image width in pixels.
pub const WIDTH: u32 = 800;
/// Image height in pixels.
pub const HEIGHT: u32 = 500;
/// Line color of the training loss in [`write_loss_png`].
pub const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
/// Line color of the evaluation loss in [`write_loss_png`].
pub const EVAL_COLOR: [u8; 3] = [255, 127, 14];

const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [40, 40, 40];
const MUTED: [u8; 3] = [120, 120, 120];
const GRID: [u8; 3] = [228, 228, 228];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];

/// Each font pixel becomes a `TEXT_SCALE` x `TEXT_SCALE` block.
const TEXT_SCALE: i64 = 2;
/// Title scale when the title fits at that size.
const TITLE_SCALE: i64 = 3;
/// Half the stroke width of curves, in pixels (a 2.5 px line plus an anti-aliased rim).
const HALF_STROKE: f64 = 1.25;
/// Radius of the dot markers.
const MARKER_RADIUS: f64 = 3.5;
/// Series with at most this many plottable points get dot markers in [`render_loss_png`].
const AUTO_MARKER_POINTS: usize = 50;
/// Values beyond this magnitude are skipped like NaN: they would overflow the axis arithmetic.
const MAX_MAGNITUDE: f64 = 1e100;
/// Length of the tick marks outside the axes.
const TICK_LEN: i64 = 5;
/// Gap between a tick mark and its label.
const LABEL_GAP: i64 = 4;
/// Margins around the plot area that do not depend on the labels.
const TOP: i64 = 48;
const BOTTOM: i64 = 62;
const RIGHT: i64 = 28;
/// Left edge of the rotated y-axis title.
const AXIS_TITLE_X: i64 = 12;

/// One curve: (step, loss) points.
pub struct Series<'a> {
    /// Name shown in the legend; series with an empty label are left out of it.
    pub label: &'a str,
    /// Points in drawing order; a NaN or infinite coordinate breaks the line.
    pub points: &'a [(f64, f64)],
    /// Line color.
    pub color: [u8; 3],
}

/// Renders the series as an 800x500 loss-vs-step plot and returns the encoded PNG bytes.
///
/// Series with at most 50 plottable points also get dot markers, so that sparse curves (and
/// single points) stay visible.
pub fn render_loss_png(series: &[Series<'_>], title: &str) -> Vec<u8> {
    let curves: Vec<Curve<'_>> = series.iter().map(Curve::auto).collect();
    render(&curves, title).0.encode_png()
}

/// Writes the standard training plot to `path`: "train loss" as a blue line and "eval loss"
/// as an orange line with dot markers.
///
/// The PNG is written to a temporary sibling file first and then renamed over `path`, so a
/// reader never sees a half-written image.
pub fn write_loss_png(path: &Path, train: &[(f64, f64)], eval: &[(f64, f64)]) -> io::Result<()> {
    let train = Series {
        label: "train loss",
        points: train,
        color: TRAIN_COLOR,
    };
    let eval = Series {
        label: "eval loss",
        points: eval,
        color: EVAL_COLOR,
    };
    let curves = [
        Curve::auto(&train),
        Curve {
            series: &eval,
            markers: true,
        },
    ];
    let bytes = render(&curves, "training loss").0.encode_png();
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `<path>.tmp` and renames it to `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "plot path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        // Best effort: do not leave the temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    })
}

// ---------------------------------------------------------------------------------------------
// Plot assembly
// ---------------------------------------------------------------------------------------------

/// A series plus how to draw it.
struct Curve<'a> {
    series: &'a Series<'a>,
    markers: bool,
}

impl<'a> Curve<'a> {
    /// Dot markers only for sparse series, where they help rather than clutter.
    fn auto(series: &'a Series<'a>) -> Curve<'a> {
        let markers = plottable_count(series.points) <= AUTO_MARKER_POINTS;
        Curve { series, markers }
    }
}

/// Draws the whole figure: frame, curves, legend, title. Also returns where the legend went
/// (tests use it to tell the legend's line samples apart from the curves).
fn render(curves: &[Curve<'_>], title: &str) -> (Canvas, Option<Rect>) {
    let mut canvas = Canvas::new(WIDTH as i64, HEIGHT as i64);
    let ranges = data_ranges(curves);
    let (x_range, y_range) = ranges.unwrap_or(((0.0, 1.0), (0.0, 1.0)));
    let frame = Frame::layout(x_range, y_range);
    frame.draw(&mut canvas);
    if ranges.is_none() {
        let note = "no data";
        let x = frame.plot.x + (frame.plot.w - text_width(note, TEXT_SCALE)) / 2;
        let y = frame.plot.y + (frame.plot.h - glyph_height(TEXT_SCALE)) / 2;
        canvas.text(x, y, note, TEXT_SCALE, MUTED);
    }
    for curve in curves {
        draw_curve(&mut canvas, &frame, curve);
    }
    let legend = draw_legend(&mut canvas, &frame, curves);
    draw_title(&mut canvas, title);
    (canvas, legend)
}

/// Whether a point can be placed on the axes.
fn plottable(&(x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && x.abs() <= MAX_MAGNITUDE && y.abs() <= MAX_MAGNITUDE
}

fn plottable_count(points: &[(f64, f64)]) -> usize {
    points.iter().filter(|p| plottable(p)).count()
}

/// A closed data interval `(lo, hi)`.
type Range = (f64, f64);

/// Min/max of x and y over all plottable points, or `None` when there are none.
fn data_ranges(curves: &[Curve<'_>]) -> Option<(Range, Range)> {
    let mut points = curves
        .iter()
        .flat_map(|c| c.series.points.iter())
        .filter(|p| plottable(p));
    let &(x, y) = points.next()?;
    let init = ((x, x), (y, y));
    Some(points.fold(init, |((x0, x1), (y0, y1)), &(x, y)| {
        ((x0.min(x), x1.max(x)), (y0.min(y), y1.max(y)))
    }))
}

/// Strokes one series (and its markers) inside the plot area.
fn draw_curve(canvas: &mut Canvas, frame: &Frame, curve: &Curve<'_>) {
    let mut mask = Mask::new(frame.plot);
    let mut prev = None;
    for p in frame.to_pixels(curve.series.points) {
        match (prev, p) {
            (Some(a), Some(b)) => mask.segment(a, b, HALF_STROKE),
            // First point of a run: a round dot keeps isolated points visible.
            (None, Some(b)) => mask.disc(b, HALF_STROKE),
            _ => {}
        }
        if let (true, Some(b)) = (curve.markers, p) {
            mask.disc(b, MARKER_RADIUS);
        }
        prev = p;
    }
    canvas.composite(&mask, curve.series.color);
}

/// Centers the title above the plot, shrinking (then truncating) it to fit the width.
fn draw_title(canvas: &mut Canvas, title: &str) {
    let max_w = canvas.w - 20;
    let scale = [TITLE_SCALE, TEXT_SCALE, 1]
        .into_iter()
        .find(|&s| text_width(title, s) <= max_w)
        .unwrap_or(1);
    let title = truncate(title, max_w, scale);
    let x = (canvas.w - text_width(&title, scale)) / 2;
    let y = (TOP - glyph_height(scale)) / 2;
    canvas.text(x, y, &title, scale, INK);
}

/// Shortens `s` to fit `max_w` pixels at `scale`, marking the cut with "...".
fn truncate(s: &str, max_w: i64, scale: i64) -> String {
    let max_chars = ((max_w + scale) / (GLYPH_ADVANCE * scale)).max(0) as usize;
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let kept = s.chars().take(max_chars.saturating_sub(3));
    kept.chain("...".chars()).take(max_chars).collect()
}

// ---------------------------------------------------------------------------------------------
// Axes
// ---------------------------------------------------------------------------------------------

/// One axis: its data range (extended to whole ticks), tick values and their labels.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    labels: Vec<String>,
}

impl Axis {
    /// Ticks at a nice step giving about `target` intervals over `[lo, hi]`.
    fn nice(lo: f64, hi: f64, target: usize) -> Axis {
        let (lo, hi) = pad_range(lo, hi);
        let step = nice_step((hi - lo) / target as f64);
        let (first, last) = ((lo / step).floor(), (hi / step).ceil());
        let ticks: Vec<f64> = (0..=(last - first) as i64)
            .map(|i| (first + i as f64) * step)
            .collect();
        let labels = tick_labels(&ticks, step);
        Axis {
            lo: first * step,
            hi: last * step,
            ticks,
            labels,
        }
    }

    /// The axis with the most ticks whose labels, `extent` px each, keep `min_gap` px apart.
    fn fit(range: Range, length: i64, min_gap: i64, extent: impl Fn(&str) -> i64) -> Axis {
        (2..=10)
            .rev()
            .map(|target| Axis::nice(range.0, range.1, target))
            .find(|axis| {
                let spacing = length as f64 / (axis.ticks.len().max(2) - 1) as f64;
                let widest = axis.labels.iter().map(|l| extent(l)).max().unwrap_or(0);
                spacing >= (widest + min_gap) as f64
            })
            .unwrap_or_else(|| Axis::nice(range.0, range.1, 1))
    }

    /// How far `v` lies from `lo` towards `hi` (0 at `lo`, 1 at `hi`).
    fn frac(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }
}

/// Widens an empty or vanishing range so the axis math never divides by zero.
fn pad_range(lo: f64, hi: f64) -> Range {
    // Below this, steps and tick positions would underflow to zero.
    const TINY: f64 = 1e-200;
    let magnitude = lo.abs().max(hi.abs());
    if hi - lo > magnitude * 1e-9 && hi - lo > TINY {
        return (lo, hi);
    }
    let pad = if magnitude > TINY {
        magnitude * 0.1
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// Rounds `rough` up to 1, 2 or 5 times a power of ten.
fn nice_step(rough: f64) -> f64 {
    let magnitude = 10f64.powf(rough.log10().floor());
    let mantissa = rough / magnitude;
    let nice = match mantissa {
        m if m <= 1.0 => 1.0,
        m if m <= 2.0 => 2.0,
        m if m <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

/// Formats tick values with just enough digits for the step, the same for every tick:
/// fixed-point normally, scientific for very large values or very fine steps.
fn tick_labels(ticks: &[f64], step: f64) -> Vec<String> {
    let largest = ticks.iter().fold(step, |m, v| m.max(v.abs()));
    let scientific = largest >= 1e6 || step < 1e-5;
    // Significant digits after the leading one (scientific) or decimals (fixed-point).
    let digits = if scientific {
        largest.log10().floor() - step.log10().floor()
    } else {
        (-step.log10() - 1e-9).ceil()
    };
    let digits = digits.clamp(0.0, 6.0) as usize;
    let format = |&v: &f64| match v {
        // Exact zero rather than a rounding residue such as "-0.0" or "1e-17".
        v if v.abs() < step * 1e-6 => "0".to_string(),
        v if scientific => format!("{v:.digits$e}"),
        v => format!("{v:.digits$}"),
    };
    ticks.iter().map(format).collect()
}

/// Where everything goes: the plot rectangle and both axes.
struct Frame {
    plot: Rect,
    x: Axis,
    y: Axis,
}

impl Frame {
    /// Picks ticks for both axes and sizes the left margin to the widest y label.
    fn layout(x_range: Range, y_range: Range) -> Frame {
        let height = HEIGHT as i64 - TOP - BOTTOM;
        let y = Axis::fit(y_range, height, 40, |_| glyph_height(TEXT_SCALE));
        let widest = y.labels.iter().map(|l| text_width(l, TEXT_SCALE)).max();
        // Rotated "loss" title, then the tick labels, then the ticks.
        let title_band = AXIS_TITLE_X + glyph_height(TEXT_SCALE) + 12;
        let left = title_band + widest.unwrap_or(0) + LABEL_GAP + TICK_LEN;
        let width = WIDTH as i64 - left - RIGHT;
        let x = Axis::fit(x_range, width, 20, |l| text_width(l, TEXT_SCALE));
        let plot = Rect::new(left, TOP, width, height);
        Frame { plot, x, y }
    }

    /// Pixel coordinates (continuous, pixel `i` spans `[i, i + 1)`) of a data point.
    fn to_pixel(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let p = &self.plot;
        let px = p.x as f64 + 0.5 + self.x.frac(x) * (p.w - 1) as f64;
        let py = (p.y + p.h) as f64 - 0.5 - self.y.frac(y) * (p.h - 1) as f64;
        (px, py)
    }

    /// Pixel coordinates of each point, `None` where the point is not plottable.
    fn to_pixels(&self, points: &[(f64, f64)]) -> Vec<Option<(f64, f64)>> {
        let map = |p: &(f64, f64)| plottable(p).then(|| self.to_pixel(*p));
        points.iter().map(map).collect()
    }

    /// Grid, axis lines, ticks, tick labels and axis titles.
    fn draw(&self, canvas: &mut Canvas) {
        self.draw_x_axis(canvas);
        self.draw_y_axis(canvas);
        let p = self.plot;
        canvas.fill_rect(Rect::new(p.x, p.y, 1, p.h), INK);
        canvas.fill_rect(Rect::new(p.x, p.bottom() - 1, p.w, 1), INK);
    }

    /// Vertical grid lines, ticks below the plot, their labels and the "step" title.
    fn draw_x_axis(&self, canvas: &mut Canvas) {
        let p = self.plot;
        for (&v, label) in self.x.ticks.iter().zip(&self.x.labels) {
            let x = self.to_pixel((v, self.y.lo)).0.floor() as i64;
            canvas.fill_rect(Rect::new(x, p.y, 1, p.h), GRID);
            canvas.fill_rect(Rect::new(x, p.bottom(), 1, TICK_LEN), INK);
            let w = text_width(label, TEXT_SCALE);
            // Keep edge labels inside the image.
            let lx = (x - w / 2).clamp(2, canvas.w - w - 2);
            let ly = p.bottom() + TICK_LEN + LABEL_GAP;
            canvas.text(lx, ly, label, TEXT_SCALE, INK);
        }
        let title_w = text_width("step", TEXT_SCALE);
        let ty = canvas.h - 10 - glyph_height(TEXT_SCALE);
        canvas.text(p.x + (p.w - title_w) / 2, ty, "step", TEXT_SCALE, INK);
    }

    /// Horizontal grid lines, ticks left of the plot, their labels and the "loss" title.
    fn draw_y_axis(&self, canvas: &mut Canvas) {
        let p = self.plot;
        let half_h = glyph_height(TEXT_SCALE) / 2;
        for (&v, label) in self.y.ticks.iter().zip(&self.y.labels) {
            let y = self.to_pixel((self.x.lo, v)).1.floor() as i64;
            canvas.fill_rect(Rect::new(p.x, y, p.w, 1), GRID);
            canvas.fill_rect(Rect::new(p.x - TICK_LEN, y, TICK_LEN, 1), INK);
            let lx = p.x - TICK_LEN - LABEL_GAP - text_width(label, TEXT_SCALE);
            canvas.text(lx, y - half_h, label, TEXT_SCALE, INK);
        }
        let title_w = text_width("loss", TEXT_SCALE);
        let ty = p.y + (p.h + title_w) / 2;
        canvas.text_up(AXIS_TITLE_X, ty, "loss", TEXT_SCALE, INK);
    }
}

// ---------------------------------------------------------------------------------------------
// Legend
// ---------------------------------------------------------------------------------------------

/// Length of the line sample in front of each legend label.
const SAMPLE_LEN: i64 = 28;
/// Padding inside the legend box and vertical gap between its rows.
const LEGEND_PAD: i64 = 8;

/// Draws the legend box in the least crowded corner; returns its rectangle.
fn draw_legend(canvas: &mut Canvas, frame: &Frame, curves: &[Curve<'_>]) -> Option<Rect> {
    let entries: Vec<&Curve<'_>> = curves
        .iter()
        .filter(|c| !c.series.label.is_empty())
        .collect();
    if entries.is_empty() {
        return None;
    }
    let max_label_w = frame.plot.w - 20 - SAMPLE_LEN - 3 * LEGEND_PAD;
    let labels: Vec<String> = entries
        .iter()
        .map(|c| truncate(c.series.label, max_label_w, TEXT_SCALE))
        .collect();
    let widest = labels.iter().map(|l| text_width(l, TEXT_SCALE)).max()?;
    let row_h = glyph_height(TEXT_SCALE) + LEGEND_PAD;
    let w = SAMPLE_LEN + widest + 3 * LEGEND_PAD;
    let h = entries.len() as i64 * row_h + LEGEND_PAD;
    let rect = place_legend(frame, curves, w, h);
    canvas.fill_rect(rect, BACKGROUND);
    canvas.stroke_rect(rect, LEGEND_BORDER);
    for (i, (curve, label)) in entries.iter().zip(&labels).enumerate() {
        let top = rect.y + LEGEND_PAD + i as i64 * row_h;
        let mid = top + glyph_height(TEXT_SCALE) / 2;
        draw_sample(canvas, rect.x + LEGEND_PAD, mid, curve);
        let tx = rect.x + 2 * LEGEND_PAD + SAMPLE_LEN;
        canvas.text(tx, top, label, TEXT_SCALE, INK);
    }
    Some(rect)
}

/// A short horizontal stroke (with a marker when the curve has them) at row `mid`.
fn draw_sample(canvas: &mut Canvas, x: i64, mid: i64, curve: &Curve<'_>) {
    let mut mask = Mask::new(Rect::new(x - 4, mid - 6, SAMPLE_LEN + 8, 13));
    let y = mid as f64 + 0.5;
    let (a, b) = ((x as f64 + 1.5, y), ((x + SAMPLE_LEN) as f64 - 1.5, y));
    mask.segment(a, b, HALF_STROKE);
    if curve.markers {
        mask.disc(((x as f64 + SAMPLE_LEN as f64 / 2.0), y), MARKER_RADIUS);
    }
    canvas.composite(&mask, curve.series.color);
}

/// Chooses the inner corner of the plot whose `w` x `h` box covers the fewest curve samples.
fn place_legend(frame: &Frame, curves: &[Curve<'_>], w: i64, h: i64) -> Rect {
    let p = frame.plot;
    let inset = 10;
    let (left, right) = (p.x + inset, p.right() - inset - w);
    let (top, bottom) = (p.y + inset, p.bottom() - inset - h);
    let corners = [(right, top), (left, top), (right, bottom), (left, bottom)];
    let samples = curve_samples(frame, curves);
    let crowding = |&(x, y): &(i64, i64)| {
        let r = Rect::new(x - 6, y - 6, w + 12, h + 12);
        samples.iter().filter(|s| r.contains(s.0, s.1)).count()
    };
    // `min_by_key` keeps the first of equal corners, so ties prefer the top right.
    let &(x, y) = corners
        .iter()
        .min_by_key(|c| crowding(c))
        .unwrap_or(&corners[0]);
    Rect::new(x, y, w, h)
}

/// Points along every curve (vertices plus a few per segment), for legend placement.
fn curve_samples(frame: &Frame, curves: &[Curve<'_>]) -> Vec<(f64, f64)> {
    let mut samples = Vec::new();
    for curve in curves {
        let pixels = frame.to_pixels(curve.series.points);
        samples.extend(pixels.iter().flatten());
        for pair in pixels.windows(2) {
            if let [Some(a), Some(b)] = pair {
                let lerp = |t: f64| (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                samples.extend((1..8).map(|i| lerp(i as f64 / 8.0)));
            }
        }
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// Raster primitives
// ---------------------------------------------------------------------------------------------

/// Integer pixel rectangle `[x, x + w) x [y, y + h)`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

impl Rect {
    fn new(x: i64, y: i64, w: i64, h: i64) -> Rect {
        Rect { x, y, w, h }
    }

    fn right(&self) -> i64 {
        self.x + self.w
    }

    fn bottom(&self) -> i64 {
        self.y + self.h
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.x as f64
            && x < self.right() as f64
            && y >= self.y as f64
            && y < self.bottom() as f64
    }
}

/// Anti-aliasing coverage (0..=1) of one shape layer, clipped to `clip`.
struct Mask {
    clip: Rect,
    cover: Vec<f32>,
}

impl Mask {
    fn new(clip: Rect) -> Mask {
        let cover = vec![0.0; (clip.w.max(0) * clip.h.max(0)) as usize];
        Mask { clip, cover }
    }

    /// Pixel range `[lo, hi)` along one axis that a shape spanning `[a, b]` can touch.
    fn span(a: f64, b: f64, start: i64, len: i64) -> (i64, i64) {
        let lo = (a.floor() as i64).max(start);
        let hi = (b.ceil() as i64 + 1).min(start + len);
        (lo, hi)
    }

    /// Adds pixels whose center lies within `half + 0.5` of the segment `a`-`b`.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), half: f64) {
        let reach = half + 1.0;
        let (x0, x1) = Self::span(
            a.0.min(b.0) - reach,
            a.0.max(b.0) + reach,
            self.clip.x,
            self.clip.w,
        );
        let (y0, y1) = Self::span(
            a.1.min(b.1) - reach,
            a.1.max(b.1) + reach,
            self.clip.y,
            self.clip.h,
        );
        for py in y0..y1 {
            for px in x0..x1 {
                let d = segment_distance((px as f64 + 0.5, py as f64 + 0.5), a, b);
                self.add(px, py, half + 0.5 - d);
            }
        }
    }

    /// A filled disc is a zero-length segment.
    fn disc(&mut self, c: (f64, f64), radius: f64) {
        self.segment(c, c, radius);
    }

    /// Keeps the strongest coverage per pixel, so overlapping segments do not darken joints.
    fn add(&mut self, x: i64, y: i64, coverage: f64) {
        let i = ((y - self.clip.y) * self.clip.w + (x - self.clip.x)) as usize;
        let c = coverage.clamp(0.0, 1.0) as f32;
        self.cover[i] = self.cover[i].max(c);
    }
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ex, ey) = (p.0 - (a.0 + t * dx), p.1 - (a.1 + t * dy));
    (ex * ex + ey * ey).sqrt()
}

/// An RGB8 image.
struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: i64, h: i64) -> Canvas {
        let px = BACKGROUND.repeat((w * h) as usize);
        Canvas { w, h, px }
    }

    /// Mixes `color` into pixel (x, y) with opacity `alpha`; off-image pixels are ignored.
    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x >= self.w || y >= self.h {
            return;
        }
        let i = ((y * self.w + x) * 3) as usize;
        for (dst, &src) in self.px[i..i + 3].iter_mut().zip(&color) {
            *dst = (*dst as f32 + (src as f32 - *dst as f32) * alpha).round() as u8;
        }
    }

    fn fill_rect(&mut self, r: Rect, color: [u8; 3]) {
        for y in r.y..r.bottom() {
            for x in r.x..r.right() {
                self.blend(x, y, color, 1.0);
            }
        }
    }

    /// One-pixel outline just inside `r`.
    fn stroke_rect(&mut self, r: Rect, color: [u8; 3]) {
        self.fill_rect(Rect::new(r.x, r.y, r.w, 1), color);
        self.fill_rect(Rect::new(r.x, r.bottom() - 1, r.w, 1), color);
        self.fill_rect(Rect::new(r.x, r.y, 1, r.h), color);
        self.fill_rect(Rect::new(r.right() - 1, r.y, 1, r.h), color);
    }

    /// Paints `color` through a coverage mask.
    fn composite(&mut self, mask: &Mask, color: [u8; 3]) {
        let c = mask.clip;
        for (i, &alpha) in mask.cover.iter().enumerate() {
            if alpha > 0.0 {
                let (dx, dy) = (i as i64 % c.w, i as i64 / c.w);
                self.blend(c.x + dx, c.y + dy, color, alpha);
            }
        }
    }

    /// Left-to-right text with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let gx = x + i as i64 * GLYPH_ADVANCE * scale;
            for (col, row) in glyph_pixels(ch) {
                self.fill_rect(
                    Rect::new(gx + col * scale, y + row * scale, scale, scale),
                    color,
                );
            }
        }
    }

    /// Text rotated 90 degrees counter-clockwise (read bottom to top), starting at the
    /// bottom-left corner (x, y).
    fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let gy = y - i as i64 * GLYPH_ADVANCE * scale;
            for (col, row) in glyph_pixels(ch) {
                let r = Rect::new(x + row * scale, gy - (col + 1) * scale, scale, scale);
                self.fill_rect(r, color);
            }
        }
    }

    fn encode_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // Flat plot art compresses best (and encodes fastest) with the plain "up" filter.
        encoder.set_filter(png::Filter::Up);
        // Writing into a Vec cannot fail and the buffer always matches the header, so an
        // error here is a bug in this module.
        let mut writer = encoder.write_header().expect("PNG header");
        writer.write_image_data(&self.px).expect("PNG image data");
        writer.finish().expect("PNG trailer");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Bitmap font
// ---------------------------------------------------------------------------------------------

/// Horizontal advance of one glyph in font pixels (5 columns plus 1 of spacing).
const GLYPH_ADVANCE: i64 = 6;
/// Glyph height in font pixels (cap height; g, j, p, q and y descend one row below it).
const GLYPH_ROWS: i64 = 7;

/// Width in image pixels of `s` drawn at `scale` (no trailing spacing).
fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    (n * GLYPH_ADVANCE - 1).max(0) * scale
}

fn glyph_height(scale: i64) -> i64 {
    GLYPH_ROWS * scale
}

/// Lit (column, row) font pixels of `ch`; characters outside ASCII 32..=126 draw as '?'.
fn glyph_pixels(ch: char) -> impl Iterator<Item = (i64, i64)> {
    let index = match ch {
        ' '..='~' => ch as usize - 32,
        _ => '?' as usize - 32,
    };
    let columns = FONT[index];
    (0..5).flat_map(move |col| {
        (0..8)
            .filter(move |&row| columns[col] >> row & 1 == 1)
            .map(move |row| (col as i64, row))
    })
}

/// Classic 5x7 font for ASCII 32..=126: five column bytes per glyph, bit 0 is the top row and
/// bit 7 the descender row.
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x08, 0x2A, 0x1C, 0x2A, 0x08], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x18, 0xA4, 0xA4, 0xA4, 0x7C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x40, 0x80, 0x84, 0x7D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0xFC, 0x24, 0x24, 0x24, 0x18], // p
    [0x18, 0x24, 0x24, 0x24, 0xFC], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x1C, 0xA0, 0xA0, 0xA0, 0x7C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded RGB image.
    struct Image {
        w: usize,
        h: usize,
        px: Vec<u8>,
    }

    impl Image {
        fn decode(bytes: &[u8]) -> Image {
            let decoder = png::Decoder::new(io::Cursor::new(bytes));
            let mut reader = decoder.read_info().expect("valid PNG header");
            let mut px = vec![0; reader.output_buffer_size().expect("buffer size")];
            let info = reader.next_frame(&mut px).expect("valid PNG data");
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert_eq!(info.bit_depth, png::BitDepth::Eight);
            px.truncate(info.buffer_size());
            let (w, h) = (info.width as usize, info.height as usize);
            Image { w, h, px }
        }

        fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
            let i = (y * self.w + x) * 3;
            [self.px[i], self.px[i + 1], self.px[i + 2]]
        }

        /// Coordinates of every pixel exactly equal to `color`.
        fn find(&self, color: [u8; 3]) -> Vec<(usize, usize)> {
            let all = (0..self.h).flat_map(|y| (0..self.w).map(move |x| (x, y)));
            all.filter(|&(x, y)| self.pixel(x, y) == color).collect()
        }
    }

    type Points = Vec<(f64, f64)>;

    /// A noisy decreasing training curve and a smooth eval curve.
    fn sample_curves() -> (Points, Points) {
        let mut state = 0x2545_f491_u64;
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let loss = |step: f64| 0.6 + 2.4 * (-step / 45.0).exp();
        let train = (0..200)
            .map(|s| (s as f64, loss(s as f64) + 0.25 * noise()))
            .collect();
        let eval = (1..=10)
            .map(|i| (i as f64 * 20.0, loss(i as f64 * 20.0) + 0.08))
            .collect();
        (train, eval)
    }

    fn decode_series(series: &[Series<'_>]) -> Image {
        Image::decode(&render_loss_png(series, "test"))
    }

    #[test]
    fn image_is_800_by_500_rgb_on_white() {
        let img = decode_series(&[]);
        assert_eq!((img.w, img.h), (WIDTH as usize, HEIGHT as usize));
        assert_eq!(img.pixel(WIDTH as usize - 1, 0), BACKGROUND);
        assert_eq!(img.pixel(0, HEIGHT as usize - 1), BACKGROUND);
    }

    #[test]
    fn train_and_eval_colors_are_drawn() {
        let (train, eval) = sample_curves();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        write_loss_png(&path, &train, &eval).unwrap();
        let img = Image::decode(&std::fs::read(&path).unwrap());
        assert!(img.find(TRAIN_COLOR).len() > 500, "train curve missing");
        assert!(img.find(EVAL_COLOR).len() > 100, "eval curve missing");
        // Atomic write: only the final file remains.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn decreasing_curve_is_higher_on_the_left() {
        let points: Vec<(f64, f64)> = (0..=100)
            .map(|i| (i as f64, 10.0 - 0.1 * i as f64))
            .collect();
        let series = [Series {
            label: "down",
            points: &points,
            color: TRAIN_COLOR,
        }];
        let curves = [Curve {
            series: &series[0],
            markers: false,
        }];
        let legend = render(&curves, "down")
            .1
            .expect("labelled series has a legend");
        let img = Image::decode(&render_loss_png(&series, "down"));
        let curve: Vec<_> = img
            .find(TRAIN_COLOR)
            .into_iter()
            .filter(|&(x, y)| !legend.contains(x as f64, y as f64))
            .collect();
        let mid = img.w / 2;
        let mean_y = |left: bool| {
            let ys: Vec<f64> = curve
                .iter()
                .filter(|p| (p.0 < mid) == left)
                .map(|p| p.1 as f64)
                .collect();
            assert!(!ys.is_empty());
            ys.iter().sum::<f64>() / ys.len() as f64
        };
        // Image y grows downwards: higher on screen means smaller y.
        assert!(mean_y(true) + 100.0 < mean_y(false));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let cases: Vec<Vec<(f64, f64)>> = vec![
            vec![],
            vec![(5.0, 2.0)],
            vec![(0.0, 0.0)],
            vec![(1.0, 3.0); 10],
            vec![(nan, nan), (inf, 1.0), (1.0, -inf)],
            vec![(0.0, 1.0), (1.0, nan), (2.0, 0.5), (3.0, inf), (4.0, 0.25)],
            vec![(0.0, 1e300), (1.0, -1e300), (2.0, 1e-300)],
            vec![(0.0, 2.0), (1.0, 2.0 + 1e-15)],
            vec![(-1e9, 1e9), (1e9, -1e9)],
            vec![(0.0, 1e-7), (1.0, 3e-7)],
        ];
        for points in &cases {
            let series = [Series {
                label: "x",
                points,
                color: TRAIN_COLOR,
            }];
            let img = decode_series(&series);
            assert_eq!((img.w, img.h), (WIDTH as usize, HEIGHT as usize));
        }
        decode_series(&[Series {
            label: "",
            points: &[],
            color: EVAL_COLOR,
        }]);
        Image::decode(&render_loss_png(&[], &"very long title ".repeat(20)));
    }

    #[test]
    fn single_point_is_visible() {
        let points = [(7.0, 1.5)];
        let series = [Series {
            label: "",
            points: &points,
            color: EVAL_COLOR,
        }];
        assert!(decode_series(&series).find(EVAL_COLOR).len() > 10);
    }

    #[test]
    fn ticks_are_nice() {
        let axis = Axis::nice(0.0, 199.0, 5);
        assert_eq!(axis.labels, ["0", "50", "100", "150", "200"]);
        assert_eq!((axis.lo, axis.hi), (0.0, 200.0));
        let axis = Axis::nice(0.52, 3.1, 6);
        assert_eq!(
            axis.labels,
            ["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5"]
        );
        assert_eq!(nice_step(0.03), 0.05);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(tick_labels(&[0.0, 5e5, 1e6], 5e5), ["0", "5.0e5", "1.0e6"]);
        assert_eq!(tick_labels(&[-0.1, -1e-17, 0.1], 0.1), ["-0.1", "0", "0.1"]);
        assert_eq!(tick_labels(&[5e-6, 1e-5], 5e-6), ["5.0e-6", "1.0e-5"]);
        assert_eq!(truncate("abcdefgh", 6 * 6 * 2, 2), "abc...");
        assert_eq!(truncate("abc", 6 * 6 * 2, 2), "abc");
    }

    #[test]
    fn flat_ranges_are_padded() {
        assert_eq!(pad_range(2.0, 2.0), (1.8, 2.2));
        assert_eq!(pad_range(0.0, 0.0), (-1.0, 1.0));
        assert_eq!(pad_range(0.0, 1.0), (0.0, 1.0));
    }
}
