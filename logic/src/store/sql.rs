//! Builds `$N` placeholder lists for multi-row statements; no IO.

/// Rows per multi-row INSERT: keeps every statement far below the bind
/// parameter limits of both backends (SQLite 32766, Postgres 65535).
pub const MAX_ROWS_PER_INSERT: usize = 500;

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` columns.
pub fn values(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// `$start, $start+1, ...` (`n` of them), for `IN (...)` lists.
pub fn list(n: usize, start: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_placeholders() {
        assert_eq!(super::values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::list(3, 2), "$2, $3, $4");
    }
}
