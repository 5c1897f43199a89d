//! Live progress: on a terminal the lines are redrawn in place (with a spinner and the time
//! waited); otherwise each line is printed again only when it changes, prefixed with the time
//! since the wait began, so logs and pipes get one line per change.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws frames: the lines describing the current state, most important first.
pub struct Display {
    started: Instant,
    mode: Mode,
}

enum Mode {
    Terminal {
        multi: MultiProgress,
        bars: Vec<ProgressBar>,
    },
    Plain {
        last: Vec<String>,
    },
}

impl Display {
    /// Redraws on a terminal when stdout is one, else prints changes.
    pub fn new() -> Self {
        let mode = if std::io::stdout().is_terminal() {
            Mode::Terminal {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                bars: Vec::new(),
            }
        } else {
            Mode::Plain { last: Vec::new() }
        };
        Self {
            started: Instant::now(),
            mode,
        }
    }

    /// Time since the display was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows `frame`; its first line carries the spinner and the time waited on a terminal.
    pub fn show(&mut self, frame: &[String]) {
        let elapsed = self.elapsed();
        match &mut self.mode {
            Mode::Terminal { multi, bars } => {
                while bars.len() < frame.len() {
                    let template = if bars.is_empty() {
                        "{spinner} {msg}  {elapsed}"
                    } else {
                        "  {msg}"
                    };
                    let style = ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    let bar = multi.add(ProgressBar::new_spinner().with_style(style));
                    if bars.is_empty() {
                        bar.enable_steady_tick(Duration::from_millis(120));
                    }
                    bars.push(bar);
                }
                while bars.len() > frame.len() {
                    if let Some(bar) = bars.pop() {
                        bar.finish_and_clear();
                        multi.remove(&bar);
                    }
                }
                for (bar, line) in bars.iter().zip(frame) {
                    bar.set_message(line.clone());
                }
            }
            Mode::Plain { last } => {
                let mut out = std::io::stdout().lock();
                for (i, line) in frame.iter().enumerate() {
                    if last.get(i) != Some(line) {
                        let _ = writeln!(out, "[{:>6.1}s] {line}", elapsed.as_secs_f64());
                    }
                }
                let _ = out.flush();
                *last = frame.to_vec();
            }
        }
    }

    /// Leaves the last frame on screen; later output goes below it.
    pub fn finish(&mut self) {
        if let Mode::Terminal { bars, .. } = &mut self.mode {
            for bar in bars.drain(..) {
                bar.finish();
            }
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

/// `[#######-------------]` for `done` of `total`.
pub fn bar(done: i32, total: i32, width: usize) -> String {
    let filled = if total <= 0 {
        0
    } else {
        (done.clamp(0, total) as usize * width) / total as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// A container ID without its runtime prefix, shortened as `crictl ps` does.
pub fn short_id(id: &str) -> &str {
    let id = id.split_once("://").map_or(id, |(_, rest)| rest);
    id.get(..13).unwrap_or(id)
}

/// Seconds with one decimal, for summaries.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 4, 8), "[--------]");
        assert_eq!(bar(1, 4, 8), "[##------]");
        assert_eq!(bar(4, 4, 8), "[########]");
        assert_eq!(bar(0, 0, 4), "[----]");
        assert_eq!(bar(9, 4, 4), "[####]");
    }

    #[test]
    fn container_ids_are_shortened() {
        assert_eq!(short_id("containerd://0123456789abcdef"), "0123456789abc");
        assert_eq!(short_id("abc"), "abc");
    }
}
