//! Drawing: a pure function of the app state, so every screen can be checked in a
//! `TestBackend` and a redraw is only ever needed when the state changed.
//!
//! Every size is computed with saturating arithmetic: the terminal may be resized to a
//! single cell, and drawing must never panic.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph};
use unicode_width::UnicodeWidthChar;

use super::app::{App, Focus, Overlay, SETTINGS, Scroll, Status, palette_actions};
use super::keymap::{Action, Context};
use super::theme::Theme;
use crate::text::sanitize;
use crate::worker::Role;

/// Below this width the sidebar is not shown, so the chat stays readable.
const SIDEBAR_MIN_TERMINAL: u16 = 60;
const SIDEBAR_WIDTH: u16 = 28;
/// The input box grows up to this many lines of text.
const INPUT_MAX_LINES: usize = 6;

struct Areas {
    sidebar: Option<Rect>,
    chat: Rect,
    notice: Rect,
    input: Rect,
    status: Rect,
}

fn layout(app: &App, area: Rect) -> Areas {
    let text_width = area.width.saturating_sub(2).max(1);
    let input_lines = wrap_input(app, text_width)
        .0
        .len()
        .clamp(1, INPUT_MAX_LINES);
    // A notice is wrapped, so a long error is readable whole; it takes at most half the
    // screen.
    let notice = notice_rows(app, area.width)
        .len()
        .min(usize::from(area.height / 2).max(1)) as u16;
    let [main, notice, input, status] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(notice),
        Constraint::Length(input_lines as u16 + 2),
        Constraint::Length(1),
    ])
    .areas(area);
    let (sidebar, chat) = if app.sidebar && area.width >= SIDEBAR_MIN_TERMINAL {
        let [s, c] =
            Layout::horizontal([Constraint::Length(SIDEBAR_WIDTH), Constraint::Min(0)]).areas(main);
        (Some(s), c)
    } else {
        (None, main)
    };
    Areas {
        sidebar,
        chat,
        notice,
        input,
        status,
    }
}

/// The notice as rows of at most `width` columns (none without a notice).
fn notice_rows(app: &App, width: u16) -> Vec<String> {
    app.notice.as_ref().map_or_else(Vec::new, |n| {
        let mark = if n.error { "! " } else { "" };
        word_wrap(
            &format!("{mark}{}", n.text),
            usize::from(width).saturating_sub(1),
        )
        .into_iter()
        .map(|row| format!(" {row}"))
        .collect()
    })
}

fn inner(r: Rect) -> Rect {
    Block::bordered().inner(r)
}

/// Width and height of the chat text, for scrolling.
pub fn chat_view_size(app: &App) -> (u16, u16) {
    let area = Rect::new(0, 0, app.size.0, app.size.1);
    let chat = inner(layout(app, area).chat);
    (chat.width, chat.height)
}

fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Splits `s` into pieces of at most `max` columns, at any character.
fn hard_wrap(s: &str, max: usize) -> Vec<String> {
    let mut rows = vec![String::new()];
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw > max && w > 0 {
            rows.push(String::new());
            w = 0;
        }
        if let Some(row) = rows.last_mut() {
            row.push(c);
        }
        w += cw;
    }
    rows
}

/// Greedy word wrap of one line to `max` columns; words longer than a row are split.
fn word_wrap(line: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut rows = Vec::new();
    let mut row = String::new();
    for word in line.split(' ') {
        let (rw, ww) = (width(&row), width(word));
        if row.is_empty() && rw == 0 && rows.is_empty() && ww <= max {
            row.push_str(word);
        } else if rw + 1 + ww <= max {
            row.push(' ');
            row.push_str(word);
        } else {
            if !row.is_empty() || !rows.is_empty() {
                rows.push(std::mem::take(&mut row));
            }
            let mut pieces = hard_wrap(word, max);
            row = pieces.pop().unwrap_or_default();
            rows.extend(pieces);
        }
    }
    rows.push(row);
    rows
}

/// Wrapped chat lines kept between frames: a message is wrapped again only when it changed
/// (the one streaming) or when the width or the theme did, so a frame or a scroll costs the
/// same at 1k and 100k tokens of history.
#[derive(Debug, Default)]
pub struct ChatCache {
    width: u16,
    theme: Option<Theme>,
    /// [`App::show_thinking`]: unfolding changes every reasoning reply's lines.
    show_thinking: bool,
    /// One per message wrapped, in order.
    entries: Vec<Entry>,
    lines: Vec<Line<'static>>,
    /// Messages wrapped so far: what a frame costs, in a form a test can check.
    pub wrapped: u64,
}

/// What a message was wrapped from, and where its lines start.
#[derive(Debug)]
struct Entry {
    id: u64,
    /// Text only grows in place (a streamed token), so its length tells a change.
    len: usize,
    status: Status,
    start: usize,
}

impl ChatCache {
    /// Brings the lines up to date with `app`'s messages at `width`.
    fn refresh(&mut self, app: &App, width: u16) {
        let theme = app.theme();
        let show_thinking = app.show_thinking;
        if self.width != width || self.theme != Some(theme) || self.show_thinking != show_thinking {
            *self = Self {
                width,
                theme: Some(theme),
                show_thinking,
                wrapped: self.wrapped,
                ..Self::default()
            };
        }
        let same = self
            .entries
            .iter()
            .zip(&app.messages)
            .take_while(|(e, m)| e.id == m.id && e.len == m.text.len() && e.status == m.status)
            .count();
        if let Some(first_changed) = self.entries.get(same) {
            self.lines.truncate(first_changed.start);
            self.entries.truncate(same);
        }
        for (i, m) in app.messages.iter().enumerate().skip(same) {
            let start = self.lines.len();
            let look = Look {
                theme: &theme,
                width: usize::from(width),
                show_thinking,
                unfold_key: app.keymap.describe(Action::ToggleThinking),
            };
            message_lines(&mut self.lines, m, i > 0, &look);
            self.wrapped += 1;
            self.entries.push(Entry {
                id: m.id,
                len: m.text.len(),
                status: m.status,
                start,
            });
        }
    }
}

/// What the chat shows before the first message.
fn hint_lines(app: &App, width: u16) -> Vec<Line<'static>> {
    let muted = Style::new().fg(app.theme().muted);
    let hint = if app.model.is_none() {
        format!(
            "No model loaded: {} opens the model picker.",
            app.keymap.describe(Action::ModelPicker)
        )
    } else if app.session.is_none() {
        format!(
            "No session is open: {} then {} starts one.",
            app.keymap.describe(Action::FocusSidebar),
            app.keymap.describe(Action::NewSession)
        )
    } else {
        "Type a message below and press Enter.".to_owned()
    };
    word_wrap(&hint, usize::from(width))
        .into_iter()
        .map(|row| Line::styled(row, muted))
        .collect()
}

/// How many screen lines the conversation takes at `width` columns.
pub fn chat_line_count(app: &App, width: u16) -> usize {
    if app.messages.is_empty() {
        return hint_lines(app, width).len();
    }
    let mut cache = app.chat_cache.borrow_mut();
    cache.refresh(app, width);
    cache.lines.len()
}

/// `count` screen lines of the conversation from line `top`, at `width` columns.
pub fn chat_window(app: &App, width: u16, top: usize, count: usize) -> Vec<Line<'static>> {
    if app.messages.is_empty() {
        return hint_lines(app, width)
            .into_iter()
            .skip(top)
            .take(count)
            .collect();
    }
    let mut cache = app.chat_cache.borrow_mut();
    cache.refresh(app, width);
    cache.lines.iter().skip(top).take(count).cloned().collect()
}

/// How messages are drawn: the theme, the width, and whether reasoning is shown unfolded.
struct Look<'a> {
    theme: &'a Theme,
    width: usize,
    show_thinking: bool,
    unfold_key: String,
}

/// One message's screen lines, appended to `lines`; `gap` puts a blank line before it.
fn message_lines(lines: &mut Vec<Line<'static>>, m: &super::app::Message, gap: bool, look: &Look) {
    let (theme, width) = (look.theme, look.width);
    let text_style = Style::new().fg(theme.text);
    let muted = Style::new().fg(theme.muted);
    let code_style = Style::new().fg(theme.code).bg(theme.code_background);
    if gap {
        lines.push(Line::default());
    }
    let (name, color) = match m.role {
        Role::User => ("You", theme.user),
        Role::Bot => ("Bot", theme.bot),
    };
    lines.push(Line::styled(
        name,
        Style::new().fg(color).add_modifier(Modifier::BOLD),
    ));
    let mut body = m.text.as_str();
    if m.reasons {
        let parts = crate::chat::thinking::split(&m.text);
        reasoning_lines(lines, &parts, look.show_thinking, look);
        body = parts.answer;
    }
    let mut in_code = false;
    for source in body.replace('\t', "    ").split('\n') {
        if source.trim_start().starts_with("```") {
            in_code = !in_code;
            lines.push(Line::styled(format!("  {source}"), muted));
        } else if in_code {
            for row in hard_wrap(source, width.saturating_sub(4).max(1)) {
                lines.push(Line::from(vec![
                    Span::styled("  │ ", muted),
                    Span::styled(row, code_style),
                ]));
            }
        } else {
            for row in word_wrap(source, width.saturating_sub(2)) {
                lines.push(Line::styled(format!("  {row}"), text_style));
            }
        }
    }
    match m.status {
        Status::Streaming => {
            if let Some(last) = lines.last_mut() {
                last.push_span(Span::styled("▌", Style::new().fg(theme.accent)));
            }
        }
        Status::Stopped => lines.push(Line::styled("  [stopped]", muted)),
        Status::Done => {}
    }
}

/// A reply's reasoning, dimmed: whole when unfolded, else one line that says how long it is
/// and which key unfolds it.
fn reasoning_lines(
    lines: &mut Vec<Line<'static>>,
    parts: &crate::chat::thinking::Parts,
    unfolded: bool,
    look: &Look,
) {
    if parts.reasoning.is_empty() && parts.done_thinking {
        return;
    }
    let style = Style::new()
        .fg(look.theme.muted)
        .add_modifier(Modifier::ITALIC);
    let count = parts.reasoning.lines().count();
    if !unfolded {
        let what = if parts.done_thinking {
            "thought"
        } else {
            "thinking…"
        };
        let summary = format!(
            "{what} ({count} line{}; {} unfolds)",
            if count == 1 { "" } else { "s" },
            look.unfold_key
        );
        lines.extend(
            word_wrap(&summary, look.width.saturating_sub(4))
                .into_iter()
                .map(|row| Line::styled(format!("  ┆ {row}"), style)),
        );
        return;
    }
    for source in parts.reasoning.replace('\t', "    ").split('\n') {
        for row in word_wrap(source, look.width.saturating_sub(4)) {
            lines.push(Line::styled(format!("  ┆ {row}"), style));
        }
    }
}

/// The input text wrapped at `width` columns, and the cursor's (row, column) in it.
fn wrap_input(app: &App, width: u16) -> (Vec<String>, (usize, usize)) {
    let width = usize::from(width.max(1));
    let (cursor_line, cursor_col) = app.input.cursor_line_col();
    let mut rows = Vec::new();
    let mut cursor = (0, 0);
    for (l, line) in app.input.text().split('\n').enumerate() {
        let pieces = hard_wrap(line, width);
        if l == cursor_line {
            let mut left = cursor_col;
            for (p, piece) in pieces.iter().enumerate() {
                let n = piece.chars().count();
                if left < n || p == pieces.len() - 1 {
                    let col = width_of_prefix(piece, left);
                    // A cursor after a full row shows at the start of the next one.
                    cursor = if col >= width {
                        (rows.len() + p + 1, 0)
                    } else {
                        (rows.len() + p, col)
                    };
                    break;
                }
                left -= n;
            }
        }
        rows.extend(pieces);
    }
    if cursor.0 >= rows.len() {
        rows.push(String::new());
    }
    (rows, cursor)
}

fn width_of_prefix(s: &str, chars: usize) -> usize {
    s.chars().take(chars).map(|c| c.width().unwrap_or(0)).sum()
}

pub fn render(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let theme = app.theme();
    frame.render_widget(Block::new().style(theme.base()), area);
    let areas = layout(app, area);
    if let Some(sidebar) = areas.sidebar {
        render_sidebar(frame, app, &theme, sidebar);
    }
    render_chat(frame, app, &theme, areas.chat);
    if let Some(n) = &app.notice {
        let style = if n.error {
            Style::new().fg(theme.error).add_modifier(Modifier::BOLD)
        } else {
            Style::new().fg(theme.accent)
        };
        let rows: Vec<Line> = notice_rows(app, areas.notice.width)
            .into_iter()
            .map(|row| Line::styled(row, style))
            .collect();
        frame.render_widget(Paragraph::new(rows), areas.notice);
    }
    render_input(frame, app, &theme, areas.input);
    render_status(frame, app, &theme, areas.status);
    if let Some(overlay) = &app.overlay {
        render_overlay(frame, app, &theme, overlay, area);
    }
}

fn border(theme: &Theme, focused: bool) -> Style {
    if focused {
        Style::new().fg(theme.accent)
    } else {
        Style::new().fg(theme.border)
    }
}

fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..60 => "now".into(),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn render_sidebar(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let focused = app.focus == Focus::Sidebar && app.overlay.is_none();
    let block = Block::bordered()
        .title(" Sessions ")
        .border_style(border(theme, focused));
    let open = app.session.as_ref().map(|s| s.name.as_str());
    let items: Vec<ListItem> = app
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // The mark column, not a highlight symbol, so no row loses width.
            let mark = if focused && i == app.selected {
                "▸ "
            } else if Some(s.name.as_str()) == open {
                "● "
            } else {
                "  "
            };
            let title = Line::styled(
                format!("{mark}{}", sanitize(&s.title)),
                Style::new().fg(theme.text).add_modifier(Modifier::BOLD),
            );
            let detail = Line::styled(
                format!("  {} · {}", sanitize(&s.model), ago(app.now, s.last_used)),
                Style::new().fg(theme.muted),
            );
            ListItem::new(vec![title, detail])
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected));
    let highlight = if focused {
        theme.selected()
    } else {
        Style::new()
    };
    frame.render_stateful_widget(
        List::new(items).block(block).highlight_style(highlight),
        area,
        &mut state,
    );
}

fn render_chat(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let title = app.session.as_ref().map_or_else(
        || " rwkv-chat ".to_owned(),
        |s| format!(" {} ", sanitize(&s.title)),
    );
    let mut block = Block::bordered()
        .title(Span::styled(title, Style::new().fg(theme.accent)))
        .border_style(border(theme, false));
    let view = inner(area);
    let total = chat_line_count(app, view.width);
    let bottom = total.saturating_sub(usize::from(view.height));
    let top = match app.scroll {
        Scroll::Follow => bottom,
        Scroll::Top(t) => {
            block = block.title_bottom(Line::styled(
                format!(" ↓ {} more lines (End) ", bottom.saturating_sub(t)),
                Style::new().fg(theme.muted),
            ));
            t.min(bottom)
        }
    };
    let visible = chat_window(app, view.width, top, usize::from(view.height));
    frame.render_widget(Paragraph::new(visible).block(block), area);
}

fn render_input(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let focused = app.focus == Focus::Input && app.overlay.is_none();
    let title = if app.editing {
        " Edit last message (Enter sends, Esc cancels) ".to_owned()
    } else if app.pending.is_some_and(|p| p.cancelled) {
        " Stopping… ".to_owned()
    } else if app.pending.is_some() {
        format!(" Replying… {} stops ", app.keymap.describe(Action::Stop))
    } else {
        format!(
            " Message ({} help) ",
            app.keymap
                .keys(Action::Help)
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        )
    };
    let block = Block::bordered()
        .title(title)
        .border_style(border(theme, focused));
    let text_area = inner(area);
    let (rows, (row, col)) = wrap_input(app, text_area.width);
    let skip = (row + 1).saturating_sub(usize::from(text_area.height));
    let visible: Vec<Line> = rows
        .into_iter()
        .skip(skip)
        .map(|r| Line::styled(r, Style::new().fg(theme.text)))
        .collect();
    frame.render_widget(Paragraph::new(visible).block(block), area);
    if focused && text_area.width > 0 && text_area.height > 0 {
        let x = text_area.x + (col as u16).min(text_area.width - 1);
        let y = text_area.y + ((row - skip) as u16).min(text_area.height - 1);
        frame.set_cursor_position(Position::new(x, y));
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.0} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn render_status(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let base = Style::new().fg(theme.status_text).bg(theme.status_bar);
    let mark = app.session.as_ref().map(|_| {
        if app.saved {
            (" ✓ saved ", theme.success)
        } else {
            (" ● unsaved ", theme.muted)
        }
    });
    let room = usize::from(area.width).saturating_sub(mark.map_or(0, |(m, _)| width(m)));
    frame.render_widget(
        Paragraph::new(format!(" {}", status_parts(app, room).join(" │ "))).style(base),
        area,
    );
    // The saved marker sits at the right edge, in the room the parts left it.
    if let Some((mark, color)) = mark {
        let w = (width(mark) as u16).min(area.width);
        let spot = Rect::new(area.right().saturating_sub(w), area.y, w, area.height);
        frame.render_widget(Paragraph::new(mark).style(base.fg(color)), spot);
    }
}

/// The status bar's parts that fit in `room` columns: when not all do, the model is named
/// by its last path component, then the least telling parts go first (state size, preset,
/// token count), so the load progress, the model and the speeds stay.
fn status_parts(app: &App, room: usize) -> Vec<String> {
    // (what, rank): a higher rank is dropped sooner.
    let mut parts: Vec<(String, u8)> = Vec::new();
    if let Some(p) = &app.loading {
        let pct = p
            .done
            .saturating_mul(100)
            .checked_div(p.total)
            .map_or_else(String::new, |pct| format!(" {pct}%"));
        parts.push((format!("loading {}{pct}", sanitize(&p.stage)), 0));
    }
    for (happened, what) in [
        (app.load_failed.is_some(), "failed"),
        (app.load_cancelled, "cancelled"),
    ] {
        if happened {
            parts.push((
                format!(
                    "model load {what} ({}: choose a model)",
                    app.keymap.describe(Action::ModelPicker)
                ),
                0,
            ));
        }
    }
    let model = |name: &str, m: &crate::worker::ModelInfo| {
        format!("{} {}/{}", sanitize(name), m.dtype, m.device)
    };
    match &app.model {
        Some(m) => parts.push((model(&m.name, m), 0)),
        None if app.loading.is_none() && app.load_failed.is_none() && !app.load_cancelled => {
            parts.push(("no model".into(), 0));
        }
        None => {}
    }
    if let Some(s) = &app.session {
        parts.push((sanitize(&s.preset).into_owned(), 4));
        parts.push((format!("{} tokens", s.tokens), 3));
        parts.push((format!("state {}", bytes(s.state_bytes)), 5));
        // Resuming normally feeds nothing again; say so when it had to.
        if s.replayed_tokens > 0 {
            parts.push((format!("{} replayed", s.replayed_tokens), 2));
        }
    }
    if let Some(st) = &app.last_stats {
        parts.push((
            format!(
                "prefill {:.0} decode {:.1} tok/s",
                st.prefill_tokens_per_s, st.decode_tokens_per_s
            ),
            1,
        ));
    }
    let fits = |parts: &[(String, u8)]| {
        // The leading space, and " │ " between parts.
        1 + parts.iter().map(|(p, _)| width(p)).sum::<usize>() + 3 * parts.len().saturating_sub(1)
            <= room
    };
    if !fits(&parts)
        && let Some(m) = &app.model
        && let Some((short, _)) = parts.iter_mut().find(|(p, _)| *p == model(&m.name, m))
    {
        let name = m.name.trim_end_matches('/');
        *short = model(name.rsplit('/').next().unwrap_or(name), m);
    }
    while !fits(&parts) {
        let Some(drop) = parts
            .iter()
            .enumerate()
            .filter(|(_, (_, rank))| *rank > 0)
            .max_by_key(|(_, (_, rank))| *rank)
            .map(|(i, _)| i)
        else {
            break;
        };
        parts.remove(drop);
    }
    parts.into_iter().map(|(p, _)| p).collect()
}

/// A box of at most `w` x `h` in the middle of `area`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// A menu box with a title and a footer hint; returns the inside.
fn popup(frame: &mut Frame, theme: &Theme, area: Rect, title: &str, hint: &str) -> Rect {
    frame.render_widget(Clear, area);
    let block = Block::bordered()
        .title(Span::styled(
            format!(" {title} "),
            Style::new().fg(theme.accent).add_modifier(Modifier::BOLD),
        ))
        .title_bottom(Line::styled(
            format!(" {hint} "),
            Style::new().fg(theme.muted),
        ))
        .border_style(Style::new().fg(theme.accent))
        .style(theme.base());
    let inside = block.inner(area);
    frame.render_widget(block, area);
    inside
}

fn list(frame: &mut Frame, theme: &Theme, area: Rect, items: Vec<Line<'static>>, selected: usize) {
    let mut state = ListState::default().with_selected(Some(selected));
    frame.render_stateful_widget(
        List::new(items)
            .highlight_style(theme.selected())
            .highlight_symbol("> "),
        area,
        &mut state,
    );
}

/// A one-line text field with its cursor.
fn field(
    frame: &mut Frame,
    theme: &Theme,
    area: Rect,
    prompt: &str,
    input: &super::input::TextInput,
) {
    let text = input.text();
    let line = Line::from(vec![
        Span::styled(prompt.to_owned(), Style::new().fg(theme.muted)),
        Span::styled(text, Style::new().fg(theme.text)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
    let col = width(prompt) + input.cursor_line_col().1;
    if area.width > 0 && area.height > 0 {
        let x = area.x + (col as u16).min(area.width - 1);
        frame.set_cursor_position(Position::new(x, area.y));
    }
}

/// Splits `area` into a first line and the rest.
fn head(area: Rect) -> (Rect, Rect) {
    let [a, b] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    (a, b)
}

/// The help screen's lines, from the keymap.
pub fn help_lines(app: &App, theme: &Theme) -> Vec<Line<'static>> {
    let heading = Style::new().fg(theme.accent).add_modifier(Modifier::BOLD);
    let row = |keys: String, what: &str| {
        Line::from(vec![
            Span::styled(format!("  {keys:<20} "), Style::new().fg(theme.user)),
            Span::styled(what.to_owned(), Style::new().fg(theme.text)),
        ])
    };
    let mut lines = vec![Line::styled("Keys", heading)];
    for context in [Context::Global, Context::Sidebar] {
        if context == Context::Sidebar {
            lines.push(Line::styled("Sessions sidebar (Up/Down select)", heading));
        }
        for a in Action::ALL.iter().filter(|a| a.context() == context) {
            lines.push(row(app.keymap.describe(*a), a.description()));
        }
    }
    lines.push(Line::styled("Editing", heading));
    for (keys, what) in [
        ("Up / Down", "Previous / next sent message"),
        ("Ctrl+A / Ctrl+E", "Start / end of line"),
        ("Ctrl+B / Ctrl+F", "Back / forward a character"),
        ("Alt+B / Alt+F", "Back / forward a word"),
        ("Ctrl+K / Ctrl+U", "Delete to end / start of line"),
        ("Ctrl+W", "Delete the word before"),
        ("Ctrl+Y", "Paste what was deleted"),
    ] {
        lines.push(row(keys.to_owned(), what));
    }
    lines.push(Line::styled("Menus", heading));
    lines.push(row("Up / Down, Enter".into(), "Choose"));
    lines.push(row("Left / Right".into(), "Adjust a sampling setting"));
    lines.push(row("Esc".into(), "Close"));
    lines
}

/// What a catalogue model costs: the download, and the memory it runs in at f16 (the dtype
/// the first-run recommendation assumes).
fn model_sizes(e: &crate::hub::catalogue::CatalogueEntry) -> String {
    format!(
        "{} download · {} RAM at f16",
        crate::hub::human_bytes(e.download_bytes()),
        crate::hub::human_bytes(e.ram_bytes(crate::model::WeightDtype::F16))
    )
}

/// Size, title and key hint of each menu's box.
fn frame_of(overlay: &Overlay) -> (u16, u16, &'static str, &'static str) {
    match overlay {
        Overlay::Help { .. } => (70, 40, "Help", "↑/↓ scroll · Esc close"),
        Overlay::Palette { .. } => (60, 20, "Commands", "type to filter · Enter run"),
        Overlay::Models { .. } => (
            80,
            14,
            "Model",
            "type to filter · Enter load (in the background) · Esc close",
        ),
        Overlay::Presets { .. } => (60, 12, "Preset", "Enter choose · Esc close"),
        Overlay::Sampling { .. } => (
            56,
            10,
            "Sampling",
            "←/→ adjust · r default · Enter apply · Esc",
        ),
        Overlay::Themes { .. } => (40, 10, "Theme", "Enter keep · Esc undo"),
        Overlay::Rename { .. } => (50, 3, "Rename", "Enter save · Esc cancel"),
        Overlay::ConfirmDelete { .. } => (50, 3, "Delete", "y delete · any other key keeps"),
        Overlay::Fork { .. } => (60, 12, "Fork after", "Enter fork · Esc close"),
        Overlay::ConfirmDownload { .. } => (70, 4, "Download", "y download · any other key keeps"),
    }
}

fn render_overlay(frame: &mut Frame, app: &App, theme: &Theme, overlay: &Overlay, area: Rect) {
    let text = Style::new().fg(theme.text);
    let muted = Style::new().fg(theme.muted);
    let (w, h, title, hint) = frame_of(overlay);
    let inside = popup(frame, theme, centered(area, w, h), title, hint);
    match overlay {
        Overlay::Help { scroll } => {
            let lines = help_lines(app, theme);
            let top = (*scroll).min(lines.len().saturating_sub(usize::from(inside.height)));
            let visible: Vec<Line> = lines.into_iter().skip(top).collect();
            frame.render_widget(Paragraph::new(visible), inside);
        }
        Overlay::Palette { filter, selected } => {
            let (top, rest) = head(inside);
            field(frame, theme, top, "Filter: ", filter);
            let items = palette_actions(&filter.text())
                .into_iter()
                .map(|a| {
                    Line::from(vec![
                        Span::styled(format!("{:<34}", a.description()), text),
                        Span::styled(app.keymap.describe(a), muted),
                    ])
                })
                .collect();
            list(frame, theme, rest, items, *selected);
        }
        Overlay::Models { input, selected } => {
            let (top, rest) = head(inside);
            field(frame, theme, top, "Filter, path or hub id: ", input);
            let (status, rest) = head(rest);
            let current = match (&app.loading, &app.model) {
                // The hint first: a download's stage fills the line.
                (Some(p), _) => format!("Loading (Esc stops it): {}", sanitize(&p.stage)),
                (None, _) if app.load_cancelled => {
                    "Load stopped; a download goes on from where it stopped next time".into()
                }
                (None, Some(m)) => format!("Loaded: {}", sanitize(&m.name)),
                (None, None) => "No model loaded".into(),
            };
            frame.render_widget(Paragraph::new(Line::styled(current, muted)), status);
            let items = super::app::model_matches(&app.models, input.text().trim())
                .into_iter()
                .map(|i| {
                    let m = &app.models[i];
                    let detail = if app.local.contains(m) {
                        "on disk".to_owned()
                    } else {
                        crate::hub::catalogue::find(m).map_or_else(String::new, model_sizes)
                    };
                    // The recent ones are listed first; the mark says why.
                    let detail = match (app.recent.contains(m), detail.is_empty()) {
                        (true, true) => "recent".to_owned(),
                        (true, false) => format!("recent · {detail}"),
                        (false, _) => detail,
                    };
                    Line::from(vec![
                        Span::styled(format!("{:<28} ", sanitize(m)), text),
                        Span::styled(detail, muted),
                    ])
                })
                .collect();
            list(frame, theme, rest, items, *selected);
        }
        Overlay::Presets { selected } => {
            let current = app.session.as_ref().map(|s| s.preset.as_str());
            let names = app
                .presets
                .iter()
                .map(|p| width(&sanitize(&p.name)))
                .max()
                .unwrap_or(0)
                .min(24);
            let items = app
                .presets
                .iter()
                .map(|p| {
                    let mark = if Some(p.name.as_str()) == current {
                        "●"
                    } else {
                        " "
                    };
                    // A column as wide as the longest name (up to 24), and a space after it.
                    let name = sanitize(&p.name);
                    Line::from(vec![
                        Span::styled(format!("{mark} {name:<names$} "), text),
                        Span::styled(sanitize(&p.description).into_owned(), muted),
                    ])
                })
                .collect();
            list(frame, theme, inside, items, *selected);
        }
        Overlay::Sampling { selected, values } => {
            let defaults = app.defaults();
            let items = SETTINGS
                .iter()
                .map(|s| {
                    Line::from(vec![
                        Span::styled(format!("{:<18} {:>7}", s.name, s.show(values)), text),
                        Span::styled(format!("   preset {}", s.show(&defaults)), muted),
                    ])
                })
                .collect();
            list(frame, theme, inside, items, *selected);
        }
        Overlay::Themes { selected, .. } => {
            let items = app
                .themes
                .list
                .iter()
                .map(|(n, _)| Line::styled(sanitize(n).into_owned(), text))
                .collect();
            list(frame, theme, inside, items, *selected);
        }
        Overlay::Rename { input, .. } => {
            field(frame, theme, inside, "Title: ", input);
        }
        Overlay::ConfirmDelete { title, .. } => {
            let line = Line::styled(
                format!("Delete “{}” for good? (y/n)", sanitize(title)),
                Style::new().fg(theme.error),
            );
            frame.render_widget(Paragraph::new(line), inside);
        }
        Overlay::ConfirmDownload { spec } => {
            // One file of a raw repo has no size here: the catalogue knows the repo only.
            let sizes = crate::hub::catalogue::find(spec).map_or_else(
                || "(y/n)".to_owned(),
                |e| format!("{} (y/n)", model_sizes(e)),
            );
            let lines = vec![
                Line::styled(format!("Download {}?", sanitize(spec)), text),
                Line::styled(sizes, muted),
            ];
            frame.render_widget(Paragraph::new(lines), inside);
        }
        Overlay::Fork { selected } => {
            let items = app
                .messages
                .iter()
                .filter(|m| m.role == Role::User)
                .enumerate()
                .map(|(i, m)| {
                    let first = m.text.lines().next().unwrap_or_default();
                    Line::styled(format!("{}. {first}", i + 1), text)
                })
                .collect();
            list(frame, theme, inside, items, *selected);
        }
    }
}
