//! JSON ⇄ XML with an explicit mapping, for SOAP-era backends.
//!
//! XML → JSON: the root element becomes the one top-level key. An element with only text is
//! a string; an empty one is `null`. Attributes become keys with `attribute_prefix` (`@id`),
//! and the text of an element that also has attributes or children goes under `text_key`
//! (`#text`). Repeated sibling elements become an array; elements whose path (`order/item`,
//! from the root) is listed in `arrays` are always arrays, even when there is one.
//!
//! JSON → XML is the inverse: an object's keys become child elements (or attributes, or text
//! by the same prefix and key), an array repeats its element, scalars become text, `null` an
//! empty element. The document needs exactly one top-level key unless `root` names the element
//! to wrap it in.

use std::collections::HashSet;

use quick_xml::Reader;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::{Map, Value};

use crate::nesting::{self, MAX_DEPTH};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlMapping {
    pub attribute_prefix: String,
    pub text_key: String,
    /// Element paths from the root (`order/item`) that are always arrays.
    pub arrays: HashSet<String>,
    /// JSON → XML: the element to wrap the document in.
    pub root: Option<String>,
    /// JSON → XML: write `<?xml version="1.0" encoding="UTF-8"?>` first.
    pub declaration: bool,
}

impl Default for XmlMapping {
    fn default() -> Self {
        XmlMapping {
            attribute_prefix: "@".into(),
            text_key: "#text".into(),
            arrays: HashSet::new(),
            root: None,
            declaration: true,
        }
    }
}

/// An element being read. Its name is the last segment of the shared path buffer, from
/// `start`: frames keep an offset instead of their own path, so memory stays linear in the
/// input however deep it nests.
struct Frame {
    start: usize,
    map: Map<String, Value>,
    text: String,
}

/// Parses an XML document into JSON. Elements nest at most [`MAX_DEPTH`]` - 1` deep, and so
/// does the JSON value (serde_json's own limit): a deeper document is an error, found as soon
/// as the element that is too deep opens.
pub fn xml_to_json(input: &[u8], mapping: &XmlMapping) -> Result<Value, String> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    // The open elements' names joined with `/` (`order/item`), for `mapping.arrays`.
    let mut path = String::new();
    let mut root: Option<(String, Value)> = None;
    let err = |e: &dyn std::fmt::Display, reader: &Reader<&[u8]>| {
        format!("invalid XML at byte {}: {e}", reader.buffer_position())
    };
    loop {
        let event = reader.read_event().map_err(|e| err(&e, &reader))?;
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() => {
                return Err(format!(
                    "invalid XML: a second root element <{}>",
                    String::from_utf8_lossy(start.name().as_ref())
                ));
            }
            Event::Start(start) => {
                let frame = open(&start, &mut path, stack.len(), mapping, &reader)?;
                stack.push(frame);
            }
            Event::Empty(start) => {
                let frame = open(&start, &mut path, stack.len(), mapping, &reader)?;
                close(frame, &mut path, &mut stack, &mut root, mapping);
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| "invalid XML: unexpected end tag".to_string())?;
                close(frame, &mut path, &mut stack, &mut root, mapping);
            }
            Event::Text(text) => {
                let text = text.xml_content().map_err(|e| err(&e, &reader))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| err(&e, &reader))?;
                push_text(&mut stack, &text)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(|e| err(&e, &reader))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference.decode().map_err(|e| err(&e, &reader))?;
                        quick_xml::escape::resolve_xml_entity(&name)
                            .ok_or_else(|| format!("invalid XML: unknown entity &{name};"))?
                            .to_string()
                    }
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("invalid XML: unclosed element".into());
    }
    let (name, value) = root.ok_or_else(|| "invalid XML: no root element".to_string())?;
    let mut doc = Map::new();
    doc.insert(name, value);
    let doc = Value::Object(doc);
    // Repeated elements become arrays, which nest one level more than the elements do.
    nesting::check(&doc).map_err(|e| format!("invalid XML: the JSON would be {e}"))?;
    Ok(doc)
}

/// Opens an element below `open` others, appending its name to `path`.
fn open(
    start: &BytesStart,
    path: &mut String,
    open: usize,
    mapping: &XmlMapping,
    reader: &Reader<&[u8]>,
) -> Result<Frame, String> {
    let qname = start.name();
    let name = String::from_utf8_lossy(qname.as_ref());
    // The document object and every open element above this one become JSON objects, so
    // this element sits `open + 1` levels down: refuse before going deeper than serde_json.
    if open + 1 >= MAX_DEPTH {
        return Err(format!("invalid XML: <{name}> is nested {MAX_DEPTH} or more levels deep"));
    }
    let mut map = Map::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("invalid XML attribute in <{name}>: {e}"))?;
        let key = String::from_utf8_lossy(attribute.key.as_ref());
        let value = attribute
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| format!("invalid XML attribute in <{name}>: {e}"))?;
        map.insert(format!("{}{key}", mapping.attribute_prefix), Value::String(value.into_owned()));
    }
    if open > 0 {
        path.push('/');
    }
    let start = path.len();
    path.push_str(&name);
    Ok(Frame { start, map, text: String::new() })
}

fn push_text(stack: &mut [Frame], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(frame) => {
            frame.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err("invalid XML: text outside the root element".into()),
    }
}

/// Closes the element of `frame`: its value goes into its parent (or becomes the root), and
/// its name comes off `path`.
fn close(
    frame: Frame,
    path: &mut String,
    stack: &mut [Frame],
    root: &mut Option<(String, Value)>,
    mapping: &XmlMapping,
) {
    let Frame { start, mut map, text } = frame;
    let text = if map.is_empty() { text } else { text.trim().to_string() };
    let value = if map.is_empty() {
        if text.trim().is_empty() { Value::Null } else { Value::String(text) }
    } else {
        if !text.is_empty() {
            map.insert(mapping.text_key.clone(), Value::String(text));
        }
        Value::Object(map)
    };
    let name = path[start..].to_string();
    let always_array = mapping.arrays.contains(path.as_str());
    // Drop `/name` (or the root's `name`).
    path.truncate(start.saturating_sub(1));
    let Some(parent) = stack.last_mut() else {
        *root = Some((name, value));
        return;
    };
    // Whitespace between child elements is layout, not content.
    if parent.text.trim().is_empty() {
        parent.text.clear();
    }
    match parent.map.get_mut(&name) {
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, value]);
        }
        None if always_array => {
            parent.map.insert(name, Value::Array(vec![value]));
        }
        None => {
            parent.map.insert(name, value);
        }
    }
}

/// Writes a JSON document as XML.
pub fn json_to_xml(doc: &Value, mapping: &XmlMapping) -> Result<Vec<u8>, String> {
    let mut writer = Writer::new(Vec::new());
    let io = |e: std::io::Error| e.to_string();
    if mapping.declaration {
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))).map_err(io)?;
    }
    match (&mapping.root, doc) {
        (Some(root), value) => write_element(&mut writer, root, value, mapping, 0)?,
        (None, Value::Object(map)) if map.len() == 1 => {
            let (name, value) = map.iter().next().expect("one entry");
            write_element(&mut writer, name, value, mapping, 1)?;
        }
        (None, _) => {
            return Err("JSON to XML needs an object with exactly one key (the root element), or `root` set".into());
        }
    }
    Ok(writer.into_inner())
}

/// Writes `value` as element(s) `name`; `depth` counts the arrays and objects around it. The
/// recursion follows the JSON nesting, so it stops at serde_json's limit.
fn write_element(
    writer: &mut Writer<Vec<u8>>,
    name: &str,
    value: &Value,
    mapping: &XmlMapping,
    depth: usize,
) -> Result<(), String> {
    if depth >= MAX_DEPTH {
        return Err(format!("JSON to XML: the document is {}", nesting::TooDeep));
    }
    check_name(name)?;
    let io = |e: std::io::Error| e.to_string();
    match value {
        Value::Array(items) => {
            for item in items {
                write_element(writer, name, item, mapping, depth + 1)?;
            }
            Ok(())
        }
        Value::Null => writer.write_event(Event::Empty(BytesStart::new(name))).map_err(io),
        Value::Object(map) => {
            let mut start = BytesStart::new(name);
            for (key, v) in map {
                if let Some(attr) = key.strip_prefix(mapping.attribute_prefix.as_str())
                    && !mapping.attribute_prefix.is_empty()
                {
                    check_name(attr)?;
                    start.push_attribute((attr, scalar_text(v)?.as_str()));
                }
            }
            writer.write_event(Event::Start(start)).map_err(io)?;
            for (key, v) in map {
                if key == &mapping.text_key {
                    writer.write_event(Event::Text(BytesText::new(&scalar_text(v)?))).map_err(io)?;
                } else if mapping.attribute_prefix.is_empty() || !key.starts_with(mapping.attribute_prefix.as_str()) {
                    write_element(writer, key, v, mapping, depth + 1)?;
                }
            }
            writer.write_event(Event::End(BytesEnd::new(name))).map_err(io)
        }
        scalar => {
            writer.write_event(Event::Start(BytesStart::new(name))).map_err(io)?;
            writer.write_event(Event::Text(BytesText::new(&scalar_text(scalar)?))).map_err(io)?;
            writer.write_event(Event::End(BytesEnd::new(name))).map_err(io)
        }
    }
}

fn scalar_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Bool(_) | Value::Number(_) => Ok(value.to_string()),
        _ => Err("an attribute or text value must be a string, number, boolean or null".into()),
    }
}

/// XML names: a letter, `_` or `:` first; then also digits, `-` and `.`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
    if ok { Ok(()) } else { Err(format!("{name:?} is not a valid XML element or attribute name")) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping(arrays: &[&str]) -> XmlMapping {
        XmlMapping { arrays: arrays.iter().map(|s| s.to_string()).collect(), ..XmlMapping::default() }
    }

    #[test]
    fn xml_to_json_mapping() {
        let xml = br#"<?xml version="1.0"?>
            <order id="7" xmlns:s="urn:x">
              <item sku="a">Apple &amp; pear</item>
              <item sku="b"/>
              <note><![CDATA[<raw>]]></note>
              <tag>one</tag>
              <empty></empty>
            </order>"#;
        let doc = xml_to_json(xml, &mapping(&["order/tag"])).unwrap();
        assert_eq!(
            doc,
            json!({"order": {
                "@id": "7", "@xmlns:s": "urn:x",
                "item": [{"@sku": "a", "#text": "Apple & pear"}, {"@sku": "b"}],
                "note": "<raw>",
                "tag": ["one"],
                "empty": null
            }})
        );
    }

    #[test]
    fn json_to_xml_mapping_round_trips() {
        let doc = json!({"order": {"@id": "7", "item": [{"@sku": "a", "#text": "A & B"}, {"@sku": "b"}], "n": 3, "none": null}});
        let xml = String::from_utf8(json_to_xml(&doc, &XmlMapping::default()).unwrap()).unwrap();
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><order id="7"><item sku="a">A &amp; B</item><item sku="b"></item><n>3</n><none/></order>"#
        );
        let back = xml_to_json(xml.as_bytes(), &mapping(&[])).unwrap();
        assert_eq!(back["order"]["item"][0]["#text"], "A & B");
        assert_eq!(back["order"]["n"], "3");
    }

    #[test]
    fn array_paths_follow_the_open_elements() {
        let xml = b"<r><x><y>1</y><w/></x><z><y>2</y></z><x><y>3</y></x></r>";
        let doc = xml_to_json(xml, &mapping(&["r/x/y", "r/z"])).unwrap();
        assert_eq!(doc, json!({"r": {"x": [{"y": ["1"], "w": null}, {"y": ["3"]}], "z": [{"y": "2"}]}}));
    }

    /// `levels` elements, each inside the previous one; with `siblings`, each level also has
    /// an empty element of the same name, so every level becomes an array and an object.
    fn nested(levels: usize, siblings: bool) -> Vec<u8> {
        let open = if siblings { "<e><e/>" } else { "<e>" };
        format!("{}x{}", open.repeat(levels), "</e>".repeat(levels)).into_bytes()
    }

    #[test]
    fn nesting_is_bounded_like_serde_json() {
        // (elements deep, with sibling arrays, accepted)
        for (levels, siblings, ok) in [
            (MAX_DEPTH - 1, false, true),
            (MAX_DEPTH, false, false),
            // The report: 20,000 levels (140 KB) grew to ~900 MiB and overflowed the stack.
            (20_000, false, false),
            (MAX_DEPTH / 2 - 1, true, true),
            (MAX_DEPTH / 2, true, false),
        ] {
            let result = xml_to_json(&nested(levels, siblings), &mapping(&[]));
            match result {
                Ok(doc) => {
                    assert!(ok, "{levels} levels (siblings: {siblings}) should be refused");
                    assert!(nesting::depth(&doc) < MAX_DEPTH);
                }
                Err(e) => {
                    assert!(!ok, "{levels} levels (siblings: {siblings}): {e}");
                    assert!(e.contains("nested 128 or more levels deep"), "{e}");
                }
            }
        }
    }

    #[test]
    fn json_to_xml_stops_at_the_nesting_limit() {
        let deep = |levels: usize| (0..levels).fold(json!("x"), |inner, _| json!({ "e": inner }));
        let written = json_to_xml(&deep(MAX_DEPTH - 1), &XmlMapping::default()).unwrap();
        let levels = MAX_DEPTH - 1;
        let expected = format!("{}x{}", "<e>".repeat(levels), "</e>".repeat(levels));
        assert!(written.ends_with(expected.as_bytes()));
        let err = json_to_xml(&deep(MAX_DEPTH), &XmlMapping::default()).unwrap_err();
        assert!(err.contains("nested 128 or more levels deep"), "{err}");
        // Arrays count too: each is a level of the recursion.
        let arrays = (0..MAX_DEPTH).fold(json!(1), |inner, _| json!([inner]));
        assert!(json_to_xml(&json!({ "e": arrays }), &XmlMapping::default()).is_err());
    }

    #[test]
    fn errors() {
        assert!(xml_to_json(b"<a><b></a>", &mapping(&[])).is_err());
        assert!(xml_to_json(b"not xml", &mapping(&[])).is_err());
        assert!(xml_to_json(b"", &mapping(&[])).is_err());
        assert!(json_to_xml(&json!({"a": 1, "b": 2}), &XmlMapping::default()).is_err());
        assert!(json_to_xml(&json!({"bad name": 1}), &XmlMapping::default()).is_err());
        let wrapped = json_to_xml(
            &json!({"a": 1}),
            &XmlMapping { root: Some("r".into()), declaration: false, ..XmlMapping::default() },
        )
        .unwrap();
        assert_eq!(wrapped, b"<r><a>1</a></r>");
    }
}
