//! Drawing one frame of `corral top` with ratatui: the headline, the workers, the
//! generations, TLS when there is any, and the events below, laid out to whatever
//! size the terminal has (the worker table and the events share what is left).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Table};
use ratatui::Frame;

use super::model::{widths, Model, Section};

const HELP: &str = "q quit | 1-9,0,- sort by column | s next column | r reverse";

pub fn draw(f: &mut Frame, m: &Model) {
    let workers = m.workers();
    let gens = m.generations();
    let tls = m.tls();
    // A table's height: its rows, a header, two borders.
    let h = |s: &Section| (s.rows.len() as u16).saturating_add(3);
    let tls_h = if tls.rows.is_empty() { 0 } else { h(&tls) };
    // The workers get their full height when there is room, the events the rest;
    // on a small terminal both shrink (the events keep a few lines).
    let [head, work, gen, tls_area, ev, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Max(h(&workers)),
        Constraint::Length(h(&gens)),
        Constraint::Length(tls_h),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(m.headline()), head);
    table(f, &workers, work, Some(m.sort));
    table(f, &gens, gen, None);
    if tls_h > 0 {
        table(f, &tls, tls_area, None);
    }
    let items: Vec<ListItem> = m.events().map(|e| ListItem::new(e.as_str())).collect();
    f.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title("events")),
        ev,
    );
    f.render_widget(
        Paragraph::new(Line::from(HELP)).style(Style::default().add_modifier(Modifier::DIM)),
        help,
    );
}

fn table(f: &mut Frame, s: &Section, area: Rect, sorted: Option<usize>) {
    let w = widths(s);
    let header = Row::new(s.header.iter().enumerate().map(|(i, c)| {
        let st = Style::default().add_modifier(Modifier::BOLD);
        if sorted == Some(i) {
            ratatui::text::Span::styled(*c, st.add_modifier(Modifier::REVERSED))
        } else {
            ratatui::text::Span::styled(*c, st)
        }
    }));
    let rows = s
        .rows
        .iter()
        .map(|r| Row::new(r.iter().map(String::as_str)));
    let cols = w.iter().map(|n| Constraint::Length(*n as u16));
    f.render_widget(
        Table::new(rows, cols).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title(s.title.as_str()),
        ),
        area,
    );
}
