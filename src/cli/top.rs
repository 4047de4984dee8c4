//! `corral top`: a live view of the running master, polled over the control socket
//! once per interval (the `status` request only, so that watching costs the master
//! one small answer per second), drawn with ratatui; `--once` prints one frame as
//! plain text for scripts. The terminal is restored on every way out: `q`, Ctrl-C
//! (a key in raw mode), SIGTERM and its kin, a master that stays away, and a panic
//! (ratatui's hook and a guard that restores on unwinding).

use crate::program::complain;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub mod model;
mod view;

use model::{Model, WORKER_COLUMNS};

/// How long the master may stay unreachable before `corral top` gives up (an
/// upgrade hands the socket over; a poll may miss in between).
const GONE_AFTER: Duration = Duration::from_secs(3);

/// `corral top`: returns the process exit code.
pub fn run(config: &Path, interval: Duration, once: bool) -> i32 {
    let interval = interval.max(Duration::from_millis(100));
    let mut m = Model::default();
    match super::poll::status(config) {
        Ok(r) => m.update(r, Instant::now()),
        Err(e) => {
            complain!("{e}");
            return 1;
        }
    }
    if once || !std::io::stdout().is_terminal() {
        // Two samples, one interval apart, so that the rates are real.
        std::thread::sleep(interval);
        match super::poll::status(config) {
            Ok(r) => m.update(r, Instant::now()),
            Err(e) => {
                complain!("{e}");
                return 1;
            }
        }
        print!("{}", m.text());
        return 0;
    }
    live(config, interval, m)
}

/// Restores the terminal when dropped: on return and on unwinding alike.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn live(config: &Path, interval: Duration, mut m: Model) -> i32 {
    // try_init installs a panic hook that restores the terminal before the message.
    let mut term = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            complain!("cannot use the terminal: {e}");
            return 1;
        }
    };
    let _restore = Restore;
    // SIGTERM, SIGHUP, SIGQUIT and SIGINT end it cleanly too, the terminal restored
    // (SIGWINCH stays crossterm's, for the resize).
    use super::interrupt::{Interrupt, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let stop = Interrupt::on(&[SIGTERM, SIGHUP, SIGQUIT, SIGINT]);
    let mut next = Instant::now() + interval;
    let mut failing_since: Option<Instant> = None;
    loop {
        if let Err(e) = term.draw(|f| view::draw(f, &m)) {
            drop(_restore);
            complain!("terminal: {e}");
            return 1;
        }
        if stop.requested() {
            return 0;
        }
        // Short enough waits that a signal is seen promptly.
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return 0;
                    }
                    key(&mut m, k.code);
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    drop(_restore);
                    complain!("terminal: {e}");
                    return 1;
                }
            },
            Ok(false) if Instant::now() < next => continue,
            Ok(false) => {}
            Err(e) => {
                drop(_restore);
                complain!("terminal: {e}");
                return 1;
            }
        }
        next = Instant::now() + interval;
        match super::poll::status(config) {
            Ok(r) => {
                failing_since = None;
                m.update(r, Instant::now());
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GONE_AFTER {
                    drop(_restore);
                    complain!("the master went away: {e}");
                    return 1;
                }
                if m.unreachable.is_none() {
                    m.push_event(format!("master unreachable: {e}"));
                }
                m.unreachable = Some(e);
            }
        }
    }
}

/// The sort keys: a column's number (1-9, 0 for the tenth, - for the eleventh), `s`
/// for the next column, `r` to reverse.
fn key(m: &mut Model, code: KeyCode) {
    match code {
        KeyCode::Char(c @ '1'..='9') => m.sort = (c as usize) - ('1' as usize),
        KeyCode::Char('0') => m.sort = 9,
        KeyCode::Char('-') => m.sort = 10,
        KeyCode::Char('s') | KeyCode::Right => m.sort = (m.sort + 1) % WORKER_COLUMNS.len(),
        KeyCode::Left => m.sort = (m.sort + WORKER_COLUMNS.len() - 1) % WORKER_COLUMNS.len(),
        KeyCode::Char('r') => m.reverse = !m.reverse,
        _ => {}
    }
}
