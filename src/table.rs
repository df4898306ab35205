//! Plain-text tables for the CLI: left-aligned columns, the last one unpadded.

/// `rows` (the header first) as aligned lines, columns separated by `gap` spaces.
pub fn aligned(rows: &[Vec<String>], gap: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad + gap));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_have_no_trailing_blanks() {
        let rows = vec![
            vec!["NAME".to_string(), "SIZE".into(), "PATH".into()],
            vec!["données".to_string(), "1.2MB".into(), String::new()],
        ];
        assert_eq!(aligned(&rows, 2), "NAME     SIZE   PATH\ndonnées  1.2MB\n");
    }
}
