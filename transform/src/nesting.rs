//! How deeply a JSON value built from request data may nest.
//!
//! serde_json's parser has a recursion limit: it rejects a document whose arrays and objects
//! nest [`MAX_DEPTH`] deep, so a body parsed from JSON nests at most `MAX_DEPTH - 1` deep. Every
//! other value the service builds from request data (XML → JSON, the result of JSON operations)
//! is held to the same bound with [`check`]. Dropping, serializing, templating or converting a
//! value recurses once per level, so this bound is what keeps a hostile body from overflowing
//! the stack.

use serde_json::Value;

/// serde_json's recursion limit: values nest fewer than this many arrays and objects.
pub const MAX_DEPTH: usize = 128;

/// The value nests arrays and objects [`MAX_DEPTH`] or more deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nested {MAX_DEPTH} or more levels deep")]
pub struct TooDeep;

/// The nesting of `value`: 0 for a scalar, 1 for `[1]` or `{}`, 2 for `{"a": []}`. Counting
/// stops at [`MAX_DEPTH`]. It walks with an explicit stack, so it is safe on any value.
pub fn depth(value: &Value) -> usize {
    let container = |v: &&Value| v.is_array() || v.is_object();
    let mut deepest = 0;
    let mut pending: Vec<(&Value, usize)> = Some(value).filter(container).map(|v| (v, 1)).into_iter().collect();
    while let Some((value, level)) = pending.pop() {
        deepest = deepest.max(level);
        if deepest >= MAX_DEPTH {
            return MAX_DEPTH;
        }
        pending.extend(children(value).filter(container).map(|c| (c, level + 1)));
    }
    deepest
}

fn children(value: &Value) -> impl Iterator<Item = &Value> {
    let (items, entries) = match value {
        Value::Array(items) => (Some(items.iter()), None),
        Value::Object(map) => (None, Some(map.values())),
        _ => (None, None),
    };
    items.into_iter().flatten().chain(entries.into_iter().flatten())
}

/// `Ok` when serde_json would parse `value` back: it nests fewer than [`MAX_DEPTH`] levels.
pub fn check(value: &Value) -> Result<(), TooDeep> {
    if depth(value) < MAX_DEPTH { Ok(()) } else { Err(TooDeep) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested_arrays(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        for (value, expected) in [
            (json!(1), 0),
            (json!([]), 1),
            (json!({"a": 1}), 1),
            (json!({"a": [], "b": 2}), 2),
            (json!([1, {"a": {"b": [null]}}, []]), 4),
        ] {
            assert_eq!(depth(&value), expected, "{value}");
        }
    }

    #[test]
    fn the_limit_is_serde_jsons() {
        // What serde_json parses passes `check`; what it refuses is exactly one level more.
        let deepest: Value = serde_json::from_str(&nested_arrays(MAX_DEPTH - 1)).unwrap();
        assert_eq!(depth(&deepest), MAX_DEPTH - 1);
        assert_eq!(check(&deepest), Ok(()));
        let err = serde_json::from_str::<Value>(&nested_arrays(MAX_DEPTH)).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");

        assert_eq!(check(&Value::Array(vec![deepest])), Err(TooDeep));
    }
}
