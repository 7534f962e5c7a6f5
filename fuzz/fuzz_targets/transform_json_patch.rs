//! Drives `gatehouse_transform::json_patch`. The input's first line is a JSON document; each
//! further line is one edit, as the `json:` body step writes them:
//! `set <pointer> <json>`, `merge <pointer> <json>`, `remove <pointer>` or
//! `rename <pointer> <pointer>`.
//!
//! Asserts: no panic; a pointer that parses is empty or starts with `/`; after a `set` that
//! succeeds, the pointer (read as RFC 6901 does) finds the value set, unless it appends with
//! `-`; after a `remove` that found an object member, the member is gone; a `rename` of a
//! missing member leaves the document as it was.
#![no_main]

use gatehouse_transform::json_patch::{self, Pointer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let Ok(mut doc) = serde_json::from_str::<Value>(lines.next().unwrap_or_default()) else { return };
    for line in lines {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (target, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(pointer) = Pointer::parse(target) else {
            assert!(!target.is_empty() && !target.starts_with('/'), "{target:?} refused");
            continue;
        };
        match op {
            "set" => {
                let Ok(value) = serde_json::from_str::<Value>(arg) else { continue };
                if json_patch::set(&mut doc, &pointer, value.clone()).is_ok() && !target.split('/').any(|t| t == "-") {
                    assert_eq!(doc.pointer(target), Some(&value), "set {target} in {doc}");
                }
            }
            "merge" => {
                let Ok(patch) = serde_json::from_str::<Value>(arg) else { continue };
                let _ = json_patch::merge(&mut doc, &pointer, &patch);
            }
            "remove" => {
                let parent_is_object =
                    target.rsplit_once('/').and_then(|(parent, _)| doc.pointer(parent)).is_some_and(Value::is_object);
                if json_patch::remove(&mut doc, &pointer).is_some() && parent_is_object {
                    assert_eq!(doc.pointer(target), None, "remove {target} from {doc}");
                }
            }
            "rename" => {
                let Ok(to) = Pointer::parse(arg) else { continue };
                let before = doc.clone();
                let missing = doc.pointer(target).is_none();
                let _ = json_patch::rename(&mut doc, &pointer, &to);
                if missing {
                    assert_eq!(doc, before, "rename of missing {target}");
                }
            }
            _ => {}
        }
    }
});
