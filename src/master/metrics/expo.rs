//! A writer for the Prometheus text exposition format, version 0.0.4.
//!
//! Each family gets its `# HELP` and `# TYPE` lines once, before its first sample,
//! and label values are escaped as the format requires (backslash, double quote,
//! newline), so an address or exit reason can never break a line.

use std::fmt::Write;

/// The metric types this exporter uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Text being built.
#[derive(Default)]
pub struct Expo {
    out: String,
}

impl Expo {
    /// Starts a family: `name` must follow the metric-name rules (ours are constants).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15 {
            let _ = write!(self.out, "{}", value as i64);
        } else if value.is_nan() {
            self.out.push_str("NaN");
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_into(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Expo::default();
        e.family("corral_x_total", Kind::Counter, "Things.")
            .sample("corral_x_total", &[("why", "a\"b\\c\nd")], 3.0)
            .sample("corral_x_total", &[], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP corral_x_total Things.\n# TYPE corral_x_total counter\n\
             corral_x_total{why=\"a\\\"b\\\\c\\nd\"} 3\ncorral_x_total 0.5\n"
        );
    }
}
