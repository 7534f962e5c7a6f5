//! Edits of individual keys of a JSON document, addressed by JSON pointer (RFC 6901), that
//! leave the rest of the document as it was: `set`, `merge`, `remove` and `rename`.
//!
//! `set` creates missing parent objects. `merge` is RFC 7386 JSON merge patch at the pointer
//! (objects merge key by key, `null` removes a key). `remove` of a missing key is not an
//! error; `rename` of a missing key does nothing.
//!
//! A token addresses an array element only if it is an RFC 6901 index: `0`, or digits without
//! a leading zero (`00`, `+0`, `-1` and ` 1` are not indexes), and `-` only where `set`
//! appends. Anything else in an array is an error for `set` and not found for the others,
//! exactly as an index past the end is.

use serde_json::{Map, Value};

/// A JSON pointer, split into unescaped tokens once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("JSON pointer {text:?} must be empty or start with '/'"));
        };
        Ok(Pointer(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect()))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

/// Sets the value at `pointer`, creating parent objects; array indexes must exist, or be `-`
/// to append.
pub fn set(doc: &mut Value, pointer: &Pointer, value: Value) -> Result<(), String> {
    let Some((last, parents)) = pointer.0.split_last() else {
        *doc = value;
        return Ok(());
    };
    let mut node = doc;
    for token in parents {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        node = match node {
            Value::Object(map) => map.entry(token.clone()).or_insert(Value::Null),
            Value::Array(items) => {
                let i = index(token, items.len())?;
                &mut items[i]
            }
            _ => return Err(format!("cannot set /{}: {token:?} is inside a scalar", pointer.0.join("/"))),
        };
    }
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let i = index(last, items.len())?;
            items[i] = value;
        }
        _ => return Err(format!("cannot set /{}: the parent is a scalar", pointer.0.join("/"))),
    }
    Ok(())
}

/// Removes and returns the value at `pointer`, if there is one.
pub fn remove(doc: &mut Value, pointer: &Pointer) -> Option<Value> {
    let (last, parents) = pointer.0.split_last()?;
    let mut node = doc;
    for token in parents {
        node = match node {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(array_index(token)?)?,
            _ => return None,
        };
    }
    match node {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let i = array_index(last).filter(|i| *i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// The value at `pointer`, if there is one.
fn get_mut<'a>(doc: &'a mut Value, pointer: &Pointer) -> Option<&'a mut Value> {
    pointer.0.iter().try_fold(doc, |node, token| match node {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => items.get_mut(array_index(token)?),
        _ => None,
    })
}

/// RFC 7386 merge of `patch` into the value at `pointer` (created if missing). An existing
/// value is merged in place, so an array element keeps its position and its neighbours.
pub fn merge(doc: &mut Value, pointer: &Pointer, patch: &Value) -> Result<(), String> {
    if let Some(target) = get_mut(doc, pointer) {
        merge_patch(target, patch);
        return Ok(());
    }
    let mut target = Value::Null;
    merge_patch(&mut target, patch);
    set(doc, pointer, target)
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { unreachable!("made an object above") };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Moves the value at `from` to `to`; nothing happens if `from` is missing.
pub fn rename(doc: &mut Value, from: &Pointer, to: &Pointer) -> Result<(), String> {
    match remove(doc, from) {
        Some(value) => set(doc, to, value),
        None => Ok(()),
    }
}

/// The array index `token` spells (RFC 6901: `0`, or digits without a leading zero), if it
/// spells one.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let canonical = digits && (token == "0" || !token.starts_with('0'));
    // More digits than `usize` holds: a valid index, past the end of any array.
    canonical.then(|| token.parse().unwrap_or(usize::MAX))
}

fn index(token: &str, len: usize) -> Result<usize, String> {
    match array_index(token) {
        Some(i) if i < len => Ok(i),
        Some(_) => Err(format!("array index {token:?} out of range (length {len})")),
        None => Err(format!("{token:?} is not an array index (0, or digits without a leading zero)")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).unwrap()
    }

    #[test]
    fn set_creates_parents_and_keeps_the_rest() {
        let mut doc = json!({"a": {"keep": 1}, "list": [1, 2]});
        set(&mut doc, &p("/a/b/c"), json!("x")).unwrap();
        set(&mut doc, &p("/list/1"), json!(20)).unwrap();
        set(&mut doc, &p("/list/-"), json!(3)).unwrap();
        set(&mut doc, &p("/with~1slash"), json!(true)).unwrap();
        assert_eq!(doc, json!({"a": {"keep": 1, "b": {"c": "x"}}, "list": [1, 20, 3], "with/slash": true}));
        assert!(set(&mut doc, &p("/list/9"), json!(0)).is_err());
        assert!(set(&mut doc, &p("/a/keep/x"), json!(0)).is_err());
        let mut null = Value::Null;
        set(&mut null, &p("/user"), json!("ann")).unwrap();
        assert_eq!(null, json!({"user": "ann"}));
    }

    #[test]
    fn merge_remove_rename() {
        let mut doc = json!({"meta": {"a": 1, "b": 2}, "secret": "s", "old": {"v": 1}});
        merge(&mut doc, &p("/meta"), &json!({"b": null, "c": 3})).unwrap();
        assert_eq!(remove(&mut doc, &p("/secret")), Some(json!("s")));
        assert_eq!(remove(&mut doc, &p("/missing/x")), None);
        rename(&mut doc, &p("/old"), &p("/new/place")).unwrap();
        rename(&mut doc, &p("/nothing"), &p("/x")).unwrap();
        assert_eq!(doc, json!({"meta": {"a": 1, "c": 3}, "new": {"place": {"v": 1}}}));
        merge(&mut doc, &p(""), &json!({"top": 1})).unwrap();
        assert_eq!(doc["top"], 1);
        assert_eq!(doc["meta"]["a"], 1);
    }

    /// Array tokens through every edit, read back as RFC 6901 (serde_json's `pointer`) reads
    /// them: a token that is not an index addresses nothing, for `set` (an error) as for the
    /// others (not found).
    #[test]
    fn array_indexes_are_rfc_6901() {
        // (token, addresses element 0 of a one-element array)
        for (token, index) in [
            ("0", true),
            // fuzz/regressions/transform_json_patch/array-index-leading-zero: `[0]`, `set /00 9`
            // set element 0, where serde_json's pointer finds nothing.
            ("00", false),
            // fuzz/regressions/transform_json_patch/array-index-plus-sign: `[0]`, `set /+0 9`.
            ("+0", false),
            ("01", false),
            ("-0", false),
            (" 0", false),
            ("0 ", false),
            ("", false),
            ("x", false),
            ("1", false),
            ("18446744073709551616", false),
        ] {
            let pointer = p(&format!("/{token}"));
            let nested = p(&format!("/{token}/k"));
            let mut doc = json!([0]);
            let set_result = set(&mut doc, &pointer, json!(9));
            assert_eq!(set_result.is_ok(), index, "set /{token}: {set_result:?}");
            if index {
                assert_eq!(doc.pointer(&format!("/{token}")), Some(&json!(9)), "set /{token}");
            } else {
                assert_eq!(doc, json!([0]), "a refused set /{token} changed the document");
                let message = set_result.unwrap_err();
                assert!(message.contains(&format!("{token:?}")), "{message}");
            }

            let mut doc = json!([{"k": 1}]);
            assert_eq!(remove(&mut doc, &nested).is_some(), index, "remove /{token}/k");
            assert_eq!(remove(&mut doc, &pointer).is_some(), index, "remove /{token}");
            assert_eq!(doc, if index { json!([]) } else { json!([{"k": 1}]) }, "remove /{token}");

            let mut doc = json!([{"k": 1}]);
            rename(&mut doc, &nested, &p("/0/moved")).unwrap();
            let renamed = if index { json!([{"moved": 1}]) } else { json!([{"k": 1}]) };
            assert_eq!(doc, renamed, "rename /{token}/k");

            let mut doc = json!([{"k": 1}]);
            let merged = merge(&mut doc, &pointer, &json!({"m": 2}));
            assert_eq!(merged.is_ok(), index, "merge /{token}: {merged:?}");
            let merged = if index { json!([{"k": 1, "m": 2}]) } else { json!([{"k": 1}]) };
            assert_eq!(doc, merged, "merge /{token}");
        }
        // `-` appends for `set`, and addresses nothing otherwise.
        let mut doc = json!([0]);
        set(&mut doc, &p("/-"), json!(1)).unwrap();
        assert!(set(&mut doc, &p("/-/k"), json!(1)).unwrap_err().contains("not an array index"));
        assert_eq!(remove(&mut doc, &p("/-")), None);
        assert_eq!(doc, json!([0, 1]));
        let mut doc = json!({"00": 1, "+0": 2});
        set(&mut doc, &p("/00"), json!(3)).unwrap();
        assert_eq!(doc, json!({"00": 3, "+0": 2}), "in an object, `00` is just a key");
        assert!(set(&mut json!([0]), &p("/5"), json!(1)).unwrap_err().contains("out of range"));
    }

    #[test]
    fn merge_into_an_array_element_keeps_its_neighbours() {
        // Merging used to remove the element and set it back, which shifted the array: the
        // next element was overwritten, or the set failed past the new end.
        let mut doc = json!({"list": [{"a": 1}, {"b": 2}]});
        merge(&mut doc, &p("/list/0"), &json!({"c": 3})).unwrap();
        assert_eq!(doc, json!({"list": [{"a": 1, "c": 3}, {"b": 2}]}));
        let mut doc = json!([1]);
        merge(&mut doc, &p("/0"), &json!({"x": 1})).unwrap();
        assert_eq!(doc, json!([{"x": 1}]));
        merge(&mut doc, &p("/-"), &json!(2)).unwrap();
        assert_eq!(doc, json!([{"x": 1}, 2]), "merge at `-` appends the patch, as set does");
    }

    #[test]
    fn pointer_syntax() {
        assert!(Pointer::parse("a/b").is_err());
        assert!(Pointer::parse("").unwrap().is_root());
    }
}
