//! Plain-text tables with aligned columns, safe to print whatever the cells hold.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Cells are made printable first: names, TXT values and certificate subjects
    /// come from the LAN and from hosts, and must not drive the operator's terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| printable(&c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `text` with every control character (escape sequences, bell, newlines, bidi overrides…)
/// written as a visible `\u{…}` escape, so announced or presented strings cannot move the
/// cursor, change colours or fake lines in an operator's terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let invisible = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if invisible {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_in_cells_are_shown_not_obeyed() {
        let mut table = Table::new(&["NAME", "TXT"]);
        table.row(vec![
            "h1\u{1b}[2J\u{1b}]0;pwned\u{7}".into(),
            "a\nfake line\u{202e}".into(),
        ]);
        let text = table.render();
        assert!(!text
            .chars()
            .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{202e}'));
        assert_eq!(text.lines().count(), 2, "no injected line: {text}");
        assert!(text.contains("h1\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn ordinary_names_are_unchanged() {
        assert_eq!(
            printable("Virtualization Host h1 — café"),
            "Virtualization Host h1 — café"
        );
    }
}
