//! Builds `$N` placeholder lists for multi-row statements; no IO.
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Rows per multi-row INSERT: keeps every statement far below the bind
/// parameter limits of both backends (SQLite 32766, Postgres 65535).
pub const MAX_ROWS_PER_INSERT: usize = 512;

/// Most bind parameters in one multi-row statement on SQLite. sqlx binds a
/// SQLite statement by asking for each parameter's name
/// (`sqlite3_bind_parameter_name`), which scans the statement's parameter
/// list: binding is quadratic in the parameters of one statement. A batch
/// of 256 messages and their receipts, padded to 512 rows of seven columns,
/// spent over half of the single-node server's CPU there; statements of
/// at most this many parameters keep it linear in the batch.
pub const SQLITE_MAX_PARAMS: usize = 256;

/// Rows of `cols` parameters each per multi-row statement on `conn`: a
/// power of two (so padding adds nothing), at most [`MAX_ROWS_PER_INSERT`],
/// and on SQLite at most [`SQLITE_MAX_PARAMS`] parameters.
pub fn rows_per_statement(conn: &sqlx::AnyConnection, cols: usize) -> usize {
    rows_for(backend_of(conn), cols)
}

/// [`rows_per_statement`] for a backend.
pub fn rows_for(backend: super::Backend, cols: usize) -> usize {
    match backend {
        super::Backend::Sqlite => rows_within(SQLITE_MAX_PARAMS, cols),
        super::Backend::Postgres => MAX_ROWS_PER_INSERT,
    }
}

/// The most rows of `cols` parameters within `params`: a power of two, at
/// least one, at most [`MAX_ROWS_PER_INSERT`].
fn rows_within(params: usize, cols: usize) -> usize {
    let fit = (params / cols.max(1)).clamp(1, MAX_ROWS_PER_INSERT);
    // The largest power of two that fits.
    1 << (usize::BITS - 1 - fit.leading_zeros())
}

/// Ids bound to an `IN (...)` list, padded by repeating the last one to a
/// power of two: every batch size then reuses one of ten statement shapes,
/// which stay prepared, instead of a new shape (parsed and planned anew)
/// per size. Repeats do not change what `IN` matches.
pub fn padded_ids(ids: &[i64]) -> impl Iterator<Item = i64> + '_ {
    padded_to(ids, padded_len(ids.len()))
}

/// `ids` padded to `n` (at least their length) by repeating the last one,
/// for statements whose `IN` lists share one padded length.
pub fn padded_to(ids: &[i64], n: usize) -> impl Iterator<Item = i64> + '_ {
    let pad = ids.last().copied().unwrap_or(0);
    ids.iter()
        .copied()
        .chain(std::iter::repeat_n(pad, n.saturating_sub(ids.len())))
}

/// The length [`padded_ids`] pads `n` ids to.
pub fn padded_len(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` columns.
pub fn values(rows: usize, cols: usize) -> String {
    values_from(rows, cols, 1)
}

/// [`values`] with the first placeholder `$start`.
pub fn values_from(rows: usize, cols: usize, start: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 6);
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
            s.push_str(&(start + r * cols + c).to_string());
        }
        s.push(')');
    }
    s
}

/// `SELECT * FROM (VALUES ...) AS v WHERE v.column1 IS NOT NULL` with
/// `rows` padded to [`padded_len`]: the caller binds the real rows, then
/// NULL rows to the padded length (see [`padded_ids`] for why). Both
/// backends name the columns of a VALUES list `column1`, `column2`, ...
pub fn padded_values(rows: usize, cols: usize) -> String {
    format!(
        "SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL",
        values(padded_len(rows), cols)
    )
}

/// A query of the `Any` driver, as built with `sqlx::query`.
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds NULL rows of `cols` bigint columns after `rows` real ones, up to
/// the padded length of a [`padded_values`] statement.
pub fn bind_null_rows(mut query: AnyQuery<'_>, rows: usize, cols: usize) -> AnyQuery<'_> {
    for _ in 0..(padded_len(rows) - rows) * cols {
        query = query.bind(None::<i64>);
    }
    query
}

/// The text of a statement shape, built once per process: `key` names the
/// statement and its sizes, `build` makes the text. The writers run their
/// statements thousands of times a second over a few dozen shapes (sizes
/// are padded to powers of two), and formatting each anew was ~7 % of a
/// writer thread's CPU. Shapes are few and bounded, so their texts live
/// for the whole process.
pub fn cached(key: ShapeKey, build: impl FnOnce() -> String) -> &'static str {
    static SHAPES: Shapes = OnceLock::new();
    intern(&SHAPES, key, build)
}

/// Statement texts by shape, kept for the whole process.
type Shapes = OnceLock<Mutex<HashMap<ShapeKey, &'static str>>>;

/// The text of `key` in `shapes`, built and kept the first time.
fn intern(shapes: &Shapes, key: ShapeKey, build: impl FnOnce() -> String) -> &'static str {
    let shapes = shapes.get_or_init(Default::default);
    if let Some(s) = shapes.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return s;
    }
    let text: &'static str = Box::leak(build().into_boxed_str());
    shapes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert(text)
}

/// Rows of `cols` parameters per multi-row INSERT built with
/// [`cached_insert`]: on SQLite its placeholders are anonymous, which
/// sqlx binds in one pass, so it takes [`MAX_ROWS_PER_INSERT`] rows like
/// Postgres (at most [`SQLITE_MAX_ANONYMOUS_PARAMS`] parameters) instead
/// of [`SQLITE_MAX_PARAMS`]: fewer statements, each a trip to the
/// connection's worker thread.
pub fn rows_per_insert(conn: &sqlx::AnyConnection, cols: usize) -> usize {
    match backend_of(conn) {
        super::Backend::Sqlite => rows_within(SQLITE_MAX_ANONYMOUS_PARAMS, cols),
        super::Backend::Postgres => MAX_ROWS_PER_INSERT,
    }
}

/// Most anonymous parameters in one SQLite statement (SQLite allows 32,766).
pub const SQLITE_MAX_ANONYMOUS_PARAMS: usize = 4096;

/// [`cached`] for a multi-row INSERT run on `conn`, whose `$1, $2, …`
/// appear once each and in order: on SQLite they become anonymous `?`.
/// sqlx binds a SQLite parameter by asking its name, which scans the
/// statement's named parameters (see [`SQLITE_MAX_PARAMS`]); anonymous
/// ones have none to scan.
pub fn cached_insert(
    conn: &sqlx::AnyConnection,
    key: ShapeKey,
    build: impl FnOnce() -> String,
) -> &'static str {
    if backend_of(conn) == super::Backend::Postgres {
        return cached(key, build);
    }
    static SQLITE: Shapes = OnceLock::new();
    intern(&SQLITE, key, || {
        let text = build();
        let anon = anonymous(&text);
        // Named, a statement of `rows_per_insert` rows would bind slowly.
        debug_assert!(anon.is_some(), "placeholders out of order: {text}");
        anon.unwrap_or(text)
    })
}

/// `sql` with `$1, $2, …` written as `?`, when they appear once each and
/// in order (an anonymous parameter takes the next value); `None` when not.
pub fn anonymous(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut next = 1;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        if rest[at + 1..at + 1 + digits].parse::<usize>().ok()? != next {
            return None;
        }
        out.push('?');
        next += 1;
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    Some(out)
}

fn backend_of(conn: &sqlx::AnyConnection) -> super::Backend {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        super::Backend::Sqlite
    } else {
        super::Backend::Postgres
    }
}

/// A statement's name and the sizes its text depends on.
pub type ShapeKey = (&'static str, usize, usize);

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
        assert_eq!(super::values_from(2, 1, 5), "($5), ($6)");
    }

    #[test]
    fn pads_id_lists_to_powers_of_two() {
        let pad = |ids: &[i64]| super::padded_ids(ids).collect::<Vec<_>>();
        assert_eq!(pad(&[]), vec![0]);
        assert_eq!(pad(&[7]), vec![7]);
        assert_eq!(pad(&[1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(pad(&[1, 2, 3, 4, 5]), vec![1, 2, 3, 4, 5, 5, 5, 5]);
        assert_eq!(super::padded_len(512), 512);
        let to = |ids: &[i64], n| super::padded_to(ids, n).collect::<Vec<_>>();
        assert_eq!(to(&[1, 2], 4), vec![1, 2, 2, 2]);
        assert_eq!(to(&[], 2), vec![0, 0]);
    }

    #[test]
    fn shapes_are_built_once_per_key() {
        let a = super::cached(("test", 1, 2), || "SELECT 1".into());
        let b = super::cached(("test", 1, 2), || unreachable!("built twice"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(
            super::cached(("test", 2, 2), || "SELECT 2".into()),
            "SELECT 2"
        );
    }

    #[test]
    fn placeholders_in_order_become_anonymous() {
        let insert = format!("INSERT INTO t {} RETURNING id", super::padded_values(3, 2));
        assert_eq!(
            super::anonymous(&insert).unwrap(),
            "INSERT INTO t SELECT * FROM (VALUES (?, ?), (?, ?), (?, ?), (?, ?)) AS v \
             WHERE v.column1 IS NOT NULL RETURNING id"
        );
        assert_eq!(super::anonymous("SELECT 1").unwrap(), "SELECT 1");
        assert_eq!(super::anonymous("SELECT $1, $10").as_deref(), None, "a gap");
        assert_eq!(
            super::anonymous("SELECT $2, $1").as_deref(),
            None,
            "out of order"
        );
        assert_eq!(
            super::anonymous("SELECT $1, $1").as_deref(),
            None,
            "repeated"
        );
        assert_eq!(super::anonymous("SELECT $").as_deref(), None);
    }

    #[test]
    fn sqlite_statements_stay_small() {
        use super::super::Backend::{Postgres, Sqlite};
        assert_eq!(super::rows_for(Sqlite, 7), 32);
        assert_eq!(super::rows_for(Sqlite, 3), 64);
        assert_eq!(super::rows_for(Sqlite, 1), 256);
        assert_eq!(super::rows_for(Sqlite, 1000), 1);
        assert_eq!(super::rows_for(Postgres, 7), super::MAX_ROWS_PER_INSERT);
    }
}
