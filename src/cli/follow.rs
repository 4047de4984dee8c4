//! Following a reload or an upgrade after the master answered: the new generation
//! (or master) serves, and the old one is still moving its connections. On a
//! terminal, a progress bar (connections moved of total, rate, time left); otherwise
//! one plain line per second, then the final counts. Followed by polling `status`
//! only; the exit status stays the request's own.

use crate::program::say;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::control::Response;

/// How often the bar is refreshed (the plain lines come once per second).
const TICK: Duration = Duration::from_millis(250);

/// Where the move stands, from the answers seen so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub moved: u64,
    pub kept: u64,
    pub closed: u64,
    /// Still on the old workers.
    pub remaining: u64,
}

impl Watch {
    /// What to follow, from the status just before the request (None: the master did
    /// not answer it, so there is nothing to compare with).
    pub fn before(what: super::SignalArg, r: &Response) -> Option<Watch> {
        match what {
            super::SignalArg::Reload => {
                let mut old: Vec<u64> = r
                    .generations
                    .iter()
                    .filter(|g| g.state != "gone")
                    .map(|g| g.generation)
                    .chain(r.workers.iter().map(|w| w.generation))
                    .collect();
                old.sort_unstable();
                old.dedup();
                let total = r.workers.iter().map(|w| w.connections).sum();
                Some(Watch::Reload { old, total })
            }
            super::SignalArg::Upgrade => Some(Watch::Upgrade {
                old_master: r.master_pid,
                total: r.workers.iter().map(|w| w.connections).sum(),
            }),
            _ => None,
        }
    }
}

impl Watch {
    /// The connections the old side had just before the request.
    fn total(&self) -> u64 {
        match self {
            Watch::Reload { total, .. } | Watch::Upgrade { total, .. } => *total,
        }
    }
}

impl Counts {
    /// Handled so far: moved, or closed by the master.
    fn done(&self) -> u64 {
        self.moved + self.closed
    }
}

/// What is followed: the generations that lived before the reload (reload), or the
/// old master's connections as the new master adopts them (upgrade).
pub enum Watch {
    Reload { old: Vec<u64>, total: u64 },
    Upgrade { old_master: i32, total: u64 },
}

/// Reads one answer: the counts, and whether the old side is gone.
fn read(w: &Watch, r: &Response) -> (Counts, bool) {
    match w {
        Watch::Reload { old, .. } => {
            let mut c = Counts::default();
            let mut live = false;
            for g in r.generations.iter().filter(|g| old.contains(&g.generation)) {
                live |= g.state != "gone";
                c.moved += g.moved;
                c.kept += g.kept;
                c.closed += g.closed;
            }
            for wk in r.workers.iter().filter(|w| old.contains(&w.generation)) {
                live = true;
                c.remaining += wk.connections;
            }
            (c, !live)
        }
        Watch::Upgrade { old_master, total } => {
            let pid = crate::os::process::Pid::from_raw(*old_master);
            let gone = !crate::os::process::alive(pid)
                || crate::os::procfs::stat(*old_master).is_ok_and(|s| s.state == 'Z');
            let moved = r.moved_from_old_master;
            let c = Counts {
                moved,
                remaining: if gone { 0 } else { total.saturating_sub(moved) },
                ..Counts::default()
            };
            (c, gone)
        }
    }
}

/// Follows the move until the old side is gone or `limit` passes. Never changes the
/// exit status: the request's outcome was already reported.
pub fn follow(config: &Path, w: Watch, limit: Duration) {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let bar = tty.then(|| {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
        if let Ok(s) = ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} moved {msg}")
        {
            b.set_style(s.progress_chars("=> "));
        }
        b
    });
    let mut last_line = Instant::now();
    let mut failures = 0;
    // Ctrl-C ends the following, not the move: the bar is finished and says so.
    use super::interrupt::{Interrupt, SIGINT, SIGTERM};
    let stop = Interrupt::on(&[SIGINT, SIGTERM]);
    loop {
        if stop.requested() {
            finish(
                bar.as_ref(),
                &format!(
                    "stopped following after {:.1}s; the move goes on (`corral status` shows it)",
                    start.elapsed().as_secs_f64()
                ),
            );
            return;
        }
        let (c, gone) = match super::poll::status(config) {
            Ok(r) => {
                failures = 0;
                read(&w, &r)
            }
            Err(e) => {
                // An upgrade hands the socket over; a poll may miss. A master that
                // stays away ends the follow, not the command.
                failures += 1;
                if failures >= 12 {
                    finish(bar.as_ref(), &format!("cannot follow the move: {e}"));
                    return;
                }
                std::thread::sleep(TICK);
                continue;
            }
        };
        // The workers' connection counts come with their periodic reports and lag
        // the moves; the count before the request is the total, unless more came in
        // meanwhile (what was handled says so).
        let total = w.total().max(c.done() + c.kept);
        let mut c = c;
        c.remaining = c.remaining.min(total - c.done());
        // Rate over the whole follow (moves come in bursts; a per-tick rate jumps).
        let rate = c.done() as f64 / start.elapsed().as_secs_f64().max(0.001);
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(c.done());
            let left = total.saturating_sub(c.done()) as f64 / rate.max(1.0);
            b.set_message(format!(
                "({rate:.0}/s, {left:.0}s left) kept {}, closed {}, remaining {}",
                c.kept, c.closed, c.remaining
            ));
        } else if last_line.elapsed() >= Duration::from_secs(1) && !gone {
            last_line = Instant::now();
            say!(
                "moving: {} of {} moved, {} kept, {} closed, {} remaining ({:.0}/s, {:.1}s)",
                c.moved,
                total,
                c.kept,
                c.closed,
                c.remaining,
                rate,
                start.elapsed().as_secs_f64()
            );
        }
        if gone {
            let what = match &w {
                Watch::Reload { .. } => "old generation gone",
                Watch::Upgrade { .. } => "old master gone",
            };
            let line = if total == 0 {
                format!(
                    "{what} after {:.1}s (it had no connections)",
                    start.elapsed().as_secs_f64()
                )
            } else {
                format!(
                    "{what} after {:.1}s: {} moved, {} kept, {} closed, {} ended by their clients (of {total})",
                    start.elapsed().as_secs_f64(),
                    c.moved,
                    c.kept,
                    c.closed,
                    total.saturating_sub(c.done() + c.kept)
                )
            };
            finish(bar.as_ref(), &line);
            return;
        }
        if start.elapsed() >= limit {
            finish(
                bar.as_ref(),
                &format!(
                    "still moving after {:.0}s ({} moved, {} kept, {} closed, {} remaining); not waiting longer",
                    start.elapsed().as_secs_f64(),
                    c.moved,
                    c.kept,
                    c.closed,
                    c.remaining
                ),
            );
            return;
        }
        std::thread::sleep(if bar.is_some() {
            TICK
        } else {
            TICK.min(Duration::from_secs(1))
        });
    }
}

fn finish(bar: Option<&ProgressBar>, line: &str) {
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    say!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::GenerationStatus;

    fn gen(g: u64, state: &str, moved: u64) -> GenerationStatus {
        GenerationStatus {
            generation: g,
            state: state.into(),
            workers: 1,
            moved,
            kept: 0,
            closed: 0,
            exit_ms: None,
        }
    }

    #[test]
    fn a_reload_is_done_when_no_older_generation_lives() {
        let mut r = Response {
            ok: true,
            message: String::new(),
            master_pid: 1,
            generation: 2,
            workers: Vec::new(),
            fault: None,
            generations: vec![
                gen(2, "serving", 0),
                gen(1, "draining", 5),
                gen(0, "gone", 7),
            ],
            moved_from_old_master: 0,
            certificates: Vec::new(),
        };
        let w = Watch::Reload {
            old: vec![1],
            total: 5,
        };
        let (c, gone) = read(&w, &r);
        assert!(!gone);
        assert_eq!(c.moved, 5);
        r.generations[1].state = "gone".into();
        let (_, gone) = read(&w, &r);
        assert!(gone);
    }
}
