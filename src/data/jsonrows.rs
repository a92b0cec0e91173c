//! The rows of a dataset file with their line numbers: a JSON array's elements when the first
//! non-space character is `[`, else one row per non-blank line (JSONL). A leading byte-order mark
//! is ignored.
//!
//! An array element's line is the one it starts on. serde_json reads one element at a time from
//! its start offset (`StreamDeserializer::byte_offset` gives where it ended), so the offsets come
//! without `serde_json`'s `raw_value` feature.

use std::path::Path;

use serde_json::Value;

use super::dataset::DataError;

/// Calls `f(line, row)` for every row of `text`: a JSON array's elements when its first
/// non-space character is `[`, else each non-blank line (JSONL). A row that is not valid JSON is
/// passed as `Err(reason)`; in an array, invalid JSON is an error here since the array cannot be
/// read past it.
pub(super) fn for_each_row(
    path: &Path,
    text: &str,
    mut f: impl FnMut(usize, Result<Value, String>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        return for_each_element(path, text, f);
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| {
            let (msg, _, column) = split_json_error(&e);
            format!("invalid JSON: {msg} (column {column})")
        });
        f(i + 1, row)?;
    }
    Ok(())
}

/// The elements of a JSON array, each with the line it starts on.
fn for_each_element(
    path: &Path,
    text: &str,
    mut f: impl FnMut(usize, Result<Value, String>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let lines = LineIndex::new(text);
    let fatal = |pos: usize, reason: String| DataError::Row {
        path: path.to_path_buf(),
        line: lines.line_col(pos).0,
        reason,
    };
    let skip_ws = |pos: usize| {
        pos + text[pos..].len()
            - text[pos..]
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .len()
    };
    // invariant: the caller saw `[` as the first non-space character.
    let mut pos = skip_ws(0) + 1;
    pos = skip_ws(pos);
    if text[pos..].starts_with(']') {
        pos += 1;
    } else {
        loop {
            let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
            match stream.next() {
                Some(Ok(value)) => {
                    let start = pos;
                    pos += stream.byte_offset();
                    f(lines.line_col(start).0, Ok(value))?;
                }
                Some(Err(e)) => {
                    let (msg, line, column) = split_json_error(&e);
                    let (start_line, start_col) = lines.line_col(pos);
                    let (line, column) = match line {
                        1 => (start_line, start_col + column.saturating_sub(1)),
                        n => (start_line + n - 1, column),
                    };
                    return Err(fatal(
                        pos,
                        format!(
                            "invalid JSON in the array: {msg} (line {line}, column {column}); \
                             the rest of the array cannot be read"
                        ),
                    ));
                }
                None => {
                    return Err(fatal(pos, "the array ends without `]`".to_string()));
                }
            }
            pos = skip_ws(pos);
            match text[pos..].chars().next() {
                Some(',') => pos = skip_ws(pos + 1),
                Some(']') => {
                    pos += 1;
                    break;
                }
                None => return Err(fatal(pos, "the array ends without `]`".to_string())),
                Some(_) => {
                    return Err(fatal(
                        pos,
                        "expected `,` or `]` after an array element".to_string(),
                    ));
                }
            }
        }
    }
    let end = skip_ws(pos);
    if end < text.len() {
        return Err(fatal(
            end,
            "text after the closing `]` of the array".to_string(),
        ));
    }
    Ok(())
}

/// serde_json's message without its " at line L column C" suffix, and L and C.
fn split_json_error(e: &serde_json::Error) -> (String, usize, usize) {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    (msg, e.line(), e.column())
}

/// Byte offset -> 1-based (line, column) in a text.
struct LineIndex {
    /// Byte offsets of the `\n`s.
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        Self {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Column in bytes.
    fn line_col(&self, pos: usize) -> (usize, usize) {
        let before = self.newlines.partition_point(|&n| n < pos);
        let line_start = if before == 0 {
            0
        } else {
            self.newlines[before - 1] + 1
        };
        (before + 1, pos - line_start + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(usize, Result<Value, String>)>;

    /// `(line, value or reason)` of every row, or the fatal error's `(line, reason)`.
    fn rows(text: &str) -> Result<Rows, (usize, String)> {
        let mut out = Vec::new();
        let result = for_each_row(Path::new("d.json"), text, |line, row| {
            out.push((line, row));
            Ok(())
        });
        match result {
            Ok(()) => Ok(out),
            Err(DataError::Row { line, reason, .. }) => Err((line, reason)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn jsonl_lines_and_bad_json() {
        let got = rows("{\"a\": 1}\n\n  \n[2]\n{x}\n").unwrap();
        let lines: Vec<usize> = got.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 4, 5]);
        assert_eq!(got[1].1, Ok(serde_json::json!([2])));
        assert_eq!(
            got[2].1,
            Err("invalid JSON: key must be a string (column 2)".to_string())
        );
    }

    #[test]
    fn array_elements_with_their_start_lines() {
        let got = rows("\u{FEFF}\n [1,\n  {\"a\":\n 2}, \"s\" ,null,\n\ntrue]  \n").unwrap();
        let lines: Vec<usize> = got.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 4, 6]);
        assert!(rows("[]").unwrap().is_empty());
        for (open, line) in [("[1", 1), ("[1,\n", 2), ("[\n", 2), ("[{\"a\": 1}\n  ", 2)] {
            assert_eq!(
                rows(open).unwrap_err(),
                (line, "the array ends without `]`".to_string()),
                "{open:?}"
            );
        }
        assert_eq!(
            rows("[1]\n]").unwrap_err(),
            (2, "text after the closing `]` of the array".to_string())
        );
    }

    #[test]
    fn line_index() {
        let idx = LineIndex::new("ab\ncd\n\ne");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(2), (1, 3));
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_col(7), (4, 1));
    }
}
