//! Edits of individual keys of a JSON document, addressed by JSON pointer (RFC 6901), that
//! leave the rest of the document as it was: `set`, `merge`, `remove` and `rename`.
//!
//! `set` creates missing parent objects. `merge` is RFC 7386 JSON merge patch at the pointer
//! (objects merge key by key, `null` removes a key). `remove` of a missing key is not an
//! error; `rename` of a missing key does nothing.

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
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match node {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// RFC 7386 merge of `patch` into the value at `pointer` (created if missing).
pub fn merge(doc: &mut Value, pointer: &Pointer, patch: &Value) -> Result<(), String> {
    let mut target = remove(doc, pointer).unwrap_or(Value::Null);
    if pointer.is_root() {
        target = std::mem::take(doc);
    }
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

fn index(token: &str, len: usize) -> Result<usize, String> {
    match token.parse::<usize>() {
        Ok(i) if i < len => Ok(i),
        _ => Err(format!("array index {token:?} out of range (length {len})")),
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

    #[test]
    fn pointer_syntax() {
        assert!(Pointer::parse("a/b").is_err());
        assert!(Pointer::parse("").unwrap().is_root());
    }
}
