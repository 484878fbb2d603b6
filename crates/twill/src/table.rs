//! Plain-text tables in kubectl's style: upper-case headers, columns padded to their widest
//! cell and separated by three spaces, no borders. Pure.

/// Renders `header` and `rows` (each as long as `header`) as aligned lines, each ending in
/// a newline, without trailing blanks.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            let pad = widths[i] - cell.chars().count() + 3;
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration in kubectl's short form: `45s`, `12m`, `5h`, `3d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_blanks() {
        let t = render(
            &["NAME", "ADDRESS"],
            &[
                vec!["n1".into(), "192.0.2.11".into()],
                vec!["node-long".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME        ADDRESS\nn1          192.0.2.11\nnode-long   -\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 86400), "3d");
    }
}
