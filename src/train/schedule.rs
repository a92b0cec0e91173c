//! Learning-rate schedules, as transformers' `get_*_schedule_with_warmup` define them for the
//! update with 0-based index `step` out of `total`:
//!
//! * warmup (`step < w`): `lr · step / w`;
//! * `constant`: `lr`;
//! * `linear`: `lr · max(0, (total − step) / (total − w))`;
//! * `cosine`: `lr · max(0, ½(1 + cos(π · (step − w) / (total − w))))`.

use std::fmt;
use std::str::FromStr;

/// The shape of the learning rate after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to 0 at the last step.
    Linear,
    /// Half a cosine from the peak to 0.
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!(
                "unknown schedule {other:?} (constant, linear or cosine)"
            )),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// A schedule over a run of `total` updates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Warmup updates.
    pub warmup: u64,
    /// Updates in the run.
    pub total: u64,
}

impl Schedule {
    /// The learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let (w, n) = (self.warmup, self.total.max(1));
        if step < w {
            return self.lr * step as f64 / w as f64;
        }
        let span = n.saturating_sub(w).max(1) as f64;
        let done = (step - w) as f64;
        match self.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Linear => self.lr * ((n as f64 - step as f64) / span).max(0.0),
            ScheduleKind::Cosine => {
                let cos = (std::f64::consts::PI * done / span).cos();
                self.lr * (0.5 * (1.0 + cos)).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let s = |kind| Schedule {
            lr: 1.0,
            kind,
            warmup: 2,
            total: 10,
        };
        let c = s(ScheduleKind::Constant);
        assert_eq!(
            [c.lr_at(0), c.lr_at(1), c.lr_at(2), c.lr_at(9)],
            [0.0, 0.5, 1.0, 1.0]
        );
        let l = s(ScheduleKind::Linear);
        assert_eq!(l.lr_at(2), 1.0);
        assert!((l.lr_at(6) - 0.5).abs() < 1e-12);
        assert!((l.lr_at(9) - 0.125).abs() < 1e-12);
        let k = s(ScheduleKind::Cosine);
        assert_eq!(k.lr_at(2), 1.0);
        assert!((k.lr_at(6) - 0.5).abs() < 1e-12);
        assert!(k.lr_at(9) < 0.05);
        assert_eq!("cosine".parse::<ScheduleKind>(), Ok(ScheduleKind::Cosine));
        assert!("cos".parse::<ScheduleKind>().is_err());
    }
}
