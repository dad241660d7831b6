//! The upload progress bar: fits the terminal's width, names the file (and "file k of n"
//! in a batch), shows bytes, rate and time left while data moves, says when the client
//! waits for the server's checksum, and leaves one line when the run is interrupted.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The bar of the file being sent, with what it needs for its messages.
#[derive(Debug, Default)]
pub(crate) struct BarState {
    bar: Option<ProgressBar>,
    label: String,
    /// (k, n): the file's place in the batch.
    file: Option<(usize, usize)>,
}

/// The terminal's width in columns, as the bar's drawing reckons it (79 when the
/// terminal does not say).
fn columns() -> usize {
    let (_, cols) = console::Term::stderr().size();
    usize::from(cols).max(20)
}

/// Seconds left as `1h02m`, `3m05s`, `42s`; nothing while no data moves (the rate is
/// unknown then, and "0s" would be a lie) or once all is sent.
fn time_left(state: &ProgressState, out: &mut dyn std::fmt::Write) {
    let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
    if state.per_sec() < 1.0 || remaining == 0 {
        return;
    }
    let secs = (remaining as f64 / state.per_sec()).round() as u64;
    let _ = match secs {
        0 => write!(out, "ETA <1s"),
        1..=59 => write!(out, "ETA {secs}s"),
        60..=3599 => write!(out, "ETA {}m{:02}s", secs / 60, secs % 60),
        _ => write!(out, "ETA {}h{:02}m", secs / 3600, secs % 3600 / 60),
    };
}

/// The template for `columns`, with a prefix of `prefix` columns ("file k of n "): the
/// name is cut to a fifth of the width, the parts that do not fit are left out (bytes
/// kept first, then the time left, then the rate), and the bar takes what is left, so
/// that a line never wraps. While waiting for the checksum the full bar gives way to the
/// words.
fn template(columns: usize, prefix: usize, waiting: bool) -> String {
    let name = (columns / 5).clamp(8, 40);
    if waiting {
        let text = [
            " waiting for the server's checksum",
            " waiting for checksum",
        ]
        .into_iter()
        .find(|text| prefix + name + text.len() <= columns)
        .unwrap_or(" waiting");
        return format!("{{prefix}}{{msg:{name}!}}{text}");
    }
    // Brackets and at least 5 columns of bar; then the widest forms of each part:
    // " 1023.99 MiB/1023.99 MiB", " ETA 59m59s", " 1023.99 MiB/s".
    let mut used = prefix + name + 8;
    let mut keep = [false; 3];
    for (slot, width) in keep.iter_mut().zip([24, 11, 14]) {
        if used + width <= columns {
            *slot = true;
            used += width;
        }
    }
    let tail = match keep {
        [false, false, false] => " {percent}%".to_owned(),
        [bytes, time_left, rate] => [
            (bytes, " {bytes}/{total_bytes}"),
            (rate, " {binary_bytes_per_sec}"),
            (time_left, " {time_left}"),
        ]
        .iter()
        .filter(|(kept, _)| *kept)
        .map(|(_, part)| *part)
        .collect(),
    };
    format!("{{prefix}}{{msg:{name}!}} [{{wide_bar}}]{tail}")
}

fn style(prefix: usize, waiting: bool) -> ProgressStyle {
    ProgressStyle::with_template(&template(columns(), prefix, waiting))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "time_left",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| time_left(state, out),
        )
        .progress_chars("=> ")
}

impl BarState {
    /// Notes the file's place in the batch for the next bar.
    pub(crate) fn set_file(&mut self, index: usize, count: usize) {
        self.file = (count > 1).then_some((index, count));
    }

    /// Starts a bar of `total` bytes for `label`.
    pub(crate) fn start(&mut self, total: u64, label: &str) {
        let prefix = match self.file {
            Some((k, n)) => format!("file {k} of {n} "),
            None => String::new(),
        };
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style(prefix.len(), false))
            .with_prefix(prefix)
            .with_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        self.label = label.to_owned();
        if let Some(old) = self.bar.replace(bar) {
            old.finish_and_clear();
        }
    }

    pub(crate) fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    /// All bytes are out: the bar says the client waits for the server's checksum.
    pub(crate) fn waiting(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(bar.length().unwrap_or(0));
            bar.set_style(style(bar.prefix().len(), true));
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Removes the bar and returns the line that says where the run stopped, if a file
    /// was being sent.
    pub(crate) fn interrupt(&mut self) -> Option<String> {
        let bar = self.bar.take()?;
        let total = bar.length().unwrap_or(0);
        let percent = (bar.position() * 100).checked_div(total).unwrap_or(0);
        bar.finish_and_clear();
        let place = match self.file {
            Some((k, n)) => format!(" (file {k} of {n})"),
            None => String::new(),
        };
        Some(format!(
            "interrupted: {}{place} at {percent} %; it was not stored (run again to send it)",
            self.label
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_leave_out_what_does_not_fit() {
        // Widest forms of each key; the bar gets at least 5 columns.
        let widths = [
            ("{bytes}/{total_bytes}", 23),
            ("{binary_bytes_per_sec}", 13),
            ("{time_left}", 10),
            ("{percent}", 3),
        ];
        for columns in [40, 59, 60, 76, 80, 100, 200] {
            for prefix in [0, 14] {
                for waiting in [false, true] {
                    let t = template(columns, prefix, waiting);
                    assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
                    let name = (columns / 5).clamp(8, 40);
                    let mut rest = t
                        .replace("{prefix}", "")
                        .replace(&format!("{{msg:{name}!}}"), "");
                    let mut width = prefix + name;
                    if rest.contains("{wide_bar}") {
                        rest = rest.replace("{wide_bar}", "");
                        width += 5;
                    }
                    for (key, w) in widths {
                        if rest.contains(key) {
                            rest = rest.replace(key, "");
                            width += w;
                        }
                    }
                    width += rest.len();
                    assert!(
                        width <= columns,
                        "{columns}/{prefix}/{waiting}: {t} needs {width}"
                    );
                }
            }
        }
        assert!(template(80, 0, false).contains("binary_bytes_per_sec"));
        assert!(!template(60, 14, false).contains("binary_bytes_per_sec"));
        assert!(template(60, 14, false).contains("total_bytes"));
        assert!(template(60, 14, true).contains("waiting for the server's checksum"));
        assert!(template(50, 14, true).contains("waiting for checksum"));
    }
}
