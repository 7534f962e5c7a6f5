//! JSON ⇄ XML with an explicit mapping, for SOAP-era backends.
//!
//! XML → JSON: the root element becomes the one top-level key. An element with only text is
//! a string; an empty one is `null`. Attributes become keys with `attribute_prefix` (`@id`;
//! with an empty prefix, keys read as the child elements JSON → XML writes them as),
//! and the text of an element that also has attributes or children goes under `text_key`
//! (`#text`). Repeated sibling elements become an array; elements whose path (`order/item`,
//! from the root) is listed in `arrays` are always arrays, even when there is one.
//!
//! JSON → XML is the inverse: an object's keys become child elements (or attributes, or text
//! by the same prefix and key), an array repeats its element, scalars become text, `null` an
//! empty element. The document needs exactly one top-level key unless `root` names the element
//! to wrap it in, and the root element's value cannot be an array: an XML document has exactly
//! one root element.
//!
//! Both directions hold to XML 1.0: names are XML names, and text is made of the characters
//! XML allows. Reading normalises line ends and attribute values as a conforming parser does;
//! writing escapes `\r` in text, and `\r`, `\n` and `\t` in attribute values, so that the
//! backend's parser reads back the exact string. A string holding a character XML cannot
//! carry (most C0 controls, U+FFFE, U+FFFF) is refused, not dropped.
//!
//! **Invariant:** a mapping that passes [`XmlMapping::validate`] is unambiguous, so XML this
//! module reads converts back to XML that reads as the same JSON: `text_key` is neither an
//! element name nor an attribute key, and a non-empty `attribute_prefix` cannot start an
//! element name (an empty one reads attributes as the elements they are written back as).

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

/// A mapping field that would make the mapping ambiguous, or could never be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("attribute_prefix: {0}")]
    AttributePrefix(String),
    #[error("text_key: {0}")]
    TextKey(String),
    #[error("root: {0}")]
    Root(String),
}

impl XmlMapping {
    /// Every reason the mapping cannot be used; config load refuses a mapping that has any.
    pub fn validate(&self) -> Result<(), Vec<MappingError>> {
        let mut problems = Vec::new();
        let prefix = &self.attribute_prefix;
        if prefix.starts_with(is_name_start) {
            problems.push(MappingError::AttributePrefix(format!(
                "{prefix:?} can start an element name, so the key {:?} would be both an attribute and \
                 a child element; use a prefix that cannot start an XML name, like \"@\" or \"-\"",
                format!("{prefix}id"),
            )));
        }
        if is_name(&self.text_key) {
            problems.push(MappingError::TextKey(format!(
                "{:?} is an XML name, so it would be both the text and a child element <{}>; use a key \
                 that is not an XML name, like \"#text\"",
                self.text_key, self.text_key,
            )));
        } else if !prefix.is_empty() && self.text_key.starts_with(prefix.as_str()) {
            problems.push(MappingError::TextKey(format!(
                "{:?} starts with the attribute_prefix {prefix:?}, so it would be read as an attribute",
                self.text_key,
            )));
        }
        if let Some(root) = &self.root
            && !is_name(root)
        {
            problems.push(MappingError::Root(format!("{root:?} is not an XML element name")));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
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
                return Err(format!("invalid XML: a second root element <{}>", name(start.name().as_ref())?));
            }
            Event::Start(start) => {
                let frame = open(&start, &mut path, stack.len(), mapping)?;
                stack.push(frame);
            }
            Event::Empty(start) => {
                let frame = open(&start, &mut path, stack.len(), mapping)?;
                close(frame, &mut path, &mut stack, &mut root, mapping);
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| "invalid XML: unexpected end tag".to_string())?;
                close(frame, &mut path, &mut stack, &mut root, mapping);
            }
            // XML 1.0 line ends (`\r\n` and `\r` become `\n`), not XML 1.1's, which also
            // turn U+0085 and U+2028 into `\n`.
            Event::Text(text) => {
                let text = text.xml10_content().map_err(|e| err(&e, &reader))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data.xml10_content().map_err(|e| err(&e, &reader))?;
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
fn open(tag: &BytesStart, path: &mut String, open: usize, mapping: &XmlMapping) -> Result<Frame, String> {
    let qname = tag.name();
    let name = name(qname.as_ref())?;
    // The document object and every open element above this one become JSON objects, so
    // this element sits `open + 1` levels down: refuse before going deeper than serde_json.
    if open + 1 >= MAX_DEPTH {
        return Err(format!("invalid XML: <{name}> is nested {MAX_DEPTH} or more levels deep"));
    }
    if open > 0 {
        path.push('/');
    }
    let start = path.len();
    path.push_str(name);
    let mut map = Map::new();
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|e| format!("invalid XML attribute in <{name}>: {e}"))?;
        let key = self::name(attribute.key.as_ref())?;
        let value =
            attribute_value(&attribute.value).map_err(|e| format!("invalid XML attribute {key} in <{name}>: {e}"))?;
        if mapping.attribute_prefix.is_empty() {
            // Without a prefix, JSON → XML writes the key back as a child element, so read it
            // as that element would be: blank is `null`, and `arrays` applies.
            let value = if value.chars().all(is_xml_space) { Value::Null } else { Value::String(value) };
            let always_array = !mapping.arrays.is_empty() && mapping.arrays.contains(&format!("{path}/{key}"));
            insert_child(&mut map, key.to_string(), value, always_array);
        } else {
            map.insert(format!("{}{key}", mapping.attribute_prefix), Value::String(value));
        }
    }
    Ok(Frame { start, map, text: String::new() })
}

/// An element or attribute name as read: UTF-8 and an XML name, or invalid XML.
fn name(raw: &[u8]) -> Result<&str, String> {
    let name = std::str::from_utf8(raw)
        .map_err(|_| format!("invalid XML: the name {:?} is not UTF-8", String::from_utf8_lossy(raw)))?;
    check_name(name).map_err(|e| format!("invalid XML: {e}"))?;
    Ok(name)
}

/// An attribute's value as a conforming parser reads it (XML 1.0 §3.3.3): each literal line
/// end (`\r\n`, `\r`, `\n`) and tab becomes a space, then references are resolved, so
/// `&#10;` is a newline.
fn attribute_value(raw: &[u8]) -> Result<String, String> {
    let raw = std::str::from_utf8(raw).map_err(|_| "the value is not UTF-8".to_string())?;
    if raw.contains('<') {
        return Err("a value cannot contain '<'".into());
    }
    let normalised = raw.replace("\r\n", " ").replace(['\r', '\n', '\t'], " ");
    let value = quick_xml::escape::unescape(&normalised).map_err(|e| e.to_string())?.into_owned();
    check_chars(&value)?;
    Ok(value)
}

fn push_text(stack: &mut [Frame], text: &str) -> Result<(), String> {
    check_chars(text).map_err(|e| format!("invalid XML: {e}"))?;
    match stack.last_mut() {
        Some(frame) => {
            frame.text.push_str(text);
            Ok(())
        }
        None if text.chars().all(is_xml_space) => Ok(()),
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
    let text = if map.is_empty() { text } else { text.trim_matches(is_xml_space).to_string() };
    let value = if map.is_empty() {
        if text.chars().all(is_xml_space) { Value::Null } else { Value::String(text) }
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
    if parent.text.chars().all(is_xml_space) {
        parent.text.clear();
    }
    insert_child(&mut parent.map, name, value, always_array);
}

/// Adds a child's value to its parent's object: a repeated name (or one listed in `arrays`)
/// makes an array.
fn insert_child(map: &mut Map<String, Value>, name: String, value: Value, always_array: bool) {
    match map.get_mut(&name) {
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, value]);
        }
        None if always_array => {
            map.insert(name, Value::Array(vec![value]));
        }
        None => {
            map.insert(name, value);
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
    let (name, value, depth) = match (&mapping.root, doc) {
        (Some(root), value) => (root.as_str(), value, 0),
        (None, Value::Object(map)) if map.len() == 1 => {
            let (name, value) = map.iter().next().expect("one entry");
            (name.as_str(), value, 1)
        }
        (None, _) => {
            return Err("JSON to XML needs an object with exactly one key (the root element), or `root` set".into());
        }
    };
    // An array would repeat the root element (or, empty, leave none): not one XML document.
    if value.is_array() {
        return Err(format!(
            "JSON to XML: the root element <{name}> cannot be an array (an XML document has exactly one root element)"
        ));
    }
    write_element(&mut writer, name, value, mapping, depth)?;
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
                    let value = escape(&scalar_text(v)?, Quoting::Attribute)?;
                    start.push_attribute((attr.as_bytes(), value.as_bytes()));
                }
            }
            writer.write_event(Event::Start(start)).map_err(io)?;
            for (key, v) in map {
                if key == &mapping.text_key {
                    let text = escape(&scalar_text(v)?, Quoting::Text)?;
                    writer.write_event(Event::Text(BytesText::from_escaped(text))).map_err(io)?;
                } else if mapping.attribute_prefix.is_empty() || !key.starts_with(mapping.attribute_prefix.as_str()) {
                    write_element(writer, key, v, mapping, depth + 1)?;
                }
            }
            writer.write_event(Event::End(BytesEnd::new(name))).map_err(io)
        }
        scalar => {
            let text = escape(&scalar_text(scalar)?, Quoting::Text)?;
            writer.write_event(Event::Start(BytesStart::new(name))).map_err(io)?;
            writer.write_event(Event::Text(BytesText::from_escaped(text))).map_err(io)?;
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

/// Where a string is written: in element content or in a (double-quoted) attribute value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Text,
    Attribute,
}

/// `text` escaped so that a conforming parser reads back exactly `text`: markup characters as
/// entities, `\r` as `&#13;` (line-end handling would make it `\n`), and in attribute values
/// also `\n` and `\t`, which attribute-value normalisation would make spaces.
fn escape(text: &str, quoting: Quoting) -> Result<String, String> {
    check_chars(text).map_err(|e| format!("JSON to XML: {e}"))?;
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match (c, quoting) {
            ('&', _) => escaped.push_str("&amp;"),
            ('<', _) => escaped.push_str("&lt;"),
            ('>', _) => escaped.push_str("&gt;"),
            ('\r', _) => escaped.push_str("&#13;"),
            ('"', Quoting::Attribute) => escaped.push_str("&quot;"),
            ('\n', Quoting::Attribute) => escaped.push_str("&#10;"),
            ('\t', Quoting::Attribute) => escaped.push_str("&#9;"),
            _ => escaped.push(c),
        }
    }
    Ok(escaped)
}

/// XML's white space (`S`): what may surround the root element, and what layout and mixed
/// content drop. Other Unicode spaces (U+00A0, U+3000, …) are text.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// XML 1.0's `Char`: tab, line ends and everything from U+0020 except the surrogates (which a
/// `str` cannot hold), U+FFFE and U+FFFF.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_chars(text: &str) -> Result<(), String> {
    match text.chars().find(|c| !is_xml_char(*c)) {
        None => Ok(()),
        Some(c) => Err(format!("U+{:04X} is not a character XML 1.0 allows", u32::from(c))),
    }
}

/// XML 1.0 (fifth edition) `NameStartChar`.
fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}'
        | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}'
        | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (fifth edition) `NameChar`.
fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// An XML `Name`: what element and attribute names must be, read or written.
fn check_name(name: &str) -> Result<(), String> {
    if is_name(name) { Ok(()) } else { Err(format!("{name:?} is not a valid XML element or attribute name")) }
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

    /// What the transform_xml_to_json fuzz target asserts: `xml` converts to `expected` (or is
    /// refused with a message containing it), and the JSON converts back to XML that reads as
    /// the same JSON.
    fn check_read(xml: &[u8], mapping: &XmlMapping, expected: Result<Value, &str>) {
        let shown = String::from_utf8_lossy(xml);
        match (xml_to_json(xml, mapping), expected) {
            (Ok(doc), Ok(expected)) => {
                assert_eq!(doc, expected, "{shown}");
                let written = json_to_xml(&doc, mapping).unwrap_or_else(|e| panic!("{shown}: {e}"));
                let again = xml_to_json(&written, mapping).unwrap_or_else(|e| panic!("{shown}: {e}"));
                assert_eq!(again, doc, "{shown} written as {}", String::from_utf8_lossy(&written));
            }
            (Err(e), Err(expected)) => assert!(e.contains(expected), "{shown}: {e}"),
            (got, expected) => panic!("{shown}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn names_are_xml_names_when_read() {
        let m = mapping(&[]);
        for (xml, expected) in [
            // fuzz/regressions/transform_xml_to_json/attribute-name-not-an-xml-name
            (&b"<a 1=\"2\"/>"[..], Err("\"1\" is not a valid XML element or attribute name")),
            // fuzz/regressions/transform_xml_to_json/element-name-not-an-xml-name
            (b"<a><1b/></a>", Err("\"1b\" is not a valid")),
            // fuzz/regressions/transform_xml_to_json/attribute-name-invalid-utf8
            (b"<a \x95=\"1\"/>", Err("is not UTF-8")),
            (b"<a\x95/>", Err("is not UTF-8")),
            (b"<a><-b/></a>", Err("\"-b\" is not a valid")),
            (b"<a><.b/></a>", Err("\".b\" is not a valid")),
            (b"<\xc2\xaa/>", Err("\"\u{aa}\" is not a valid")),
            (b"<a/><1b/>", Err("\"1b\" is not a valid")),
            (
                b"<a:b \xc3\xa9-1.x=\"v\" _=\"w\"><c\xc2\xb7d/></a:b>",
                Ok(json!({"a:b": {"@\u{e9}-1.x": "v", "@_": "w", "c\u{b7}d": null}})),
            ),
        ] {
            check_read(xml, &m, expected);
        }
        assert!(xml_to_json(b"<>", &m).is_err());
        assert!(xml_to_json(b"<a =\"1\"/>", &m).is_err());
    }

    #[test]
    fn line_ends_and_characters_xml_cannot_carry() {
        let m = mapping(&[]);
        for (xml, expected) in [
            // fuzz/regressions/transform_xml_to_json/carriage-return-becomes-newline: `x\ry` was
            // written with a raw `\r`, which reads back as `\n`.
            (&b"<a>x&#13;y</a>"[..], Ok(json!({"a": "x\ry"}))),
            (b"<a>x\r\ny\rz\n</a>", Ok(json!({"a": "x\ny\nz\n"}))),
            (b"<a><![CDATA[x\r\ny\r]]></a>", Ok(json!({"a": "x\ny\n"}))),
            // XML 1.0 line ends only: U+0085 and U+2028 are ordinary characters.
            ("<a>x\u{85}y\u{2028}</a>".as_bytes(), Ok(json!({"a": "x\u{85}y\u{2028}"}))),
            // Attribute values: literal white space is a space, references are kept.
            (b"<a x=\"1\r\n2\n3\t4\r5\"/>", Ok(json!({"a": {"@x": "1 2 3 4 5"}}))),
            (b"<a x=\"1&#13;&#10;2&#9;3&quot;&lt;\"/>", Ok(json!({"a": {"@x": "1\r\n2\t3\"<"}}))),
            // Only XML's white space is layout; other spaces are text.
            ("<a>\u{A0}</a>".as_bytes(), Ok(json!({"a": "\u{a0}"}))),
            ("<a x=\"1\"> \u{3000}\r\n</a>".as_bytes(), Ok(json!({"a": {"@x": "1", "#text": "\u{3000}"}}))),
            (b"<a x=\"<\"/>", Err("cannot contain '<'")),
            (b"<a x=\"&bogus;\"/>", Err("invalid XML attribute x in <a>")),
            (b"<a>x\x01</a>", Err("U+0001 is not a character XML 1.0 allows")),
            (b"<a>&#1;</a>", Err("U+0001 is not a character XML 1.0 allows")),
            (b"<a x=\"&#x1F;\"/>", Err("U+001F is not a character XML 1.0 allows")),
            (b"<a>&#xFFFE;</a>", Err("U+FFFE is not a character")),
            ("<a>\u{FFFF}</a>".as_bytes(), Err("U+FFFF is not a character")),
            (b"<a/>\x0c", Err("U+000C is not a character")),
            ("\u{3000}<a/>".as_bytes(), Err("text outside the root element")),
        ] {
            check_read(xml, &m, expected);
        }
    }

    #[test]
    fn without_a_prefix_attributes_read_as_the_elements_they_are_written_as() {
        let m = XmlMapping { attribute_prefix: String::new(), text_key: String::new(), ..mapping(&["r/x"]) };
        for (xml, expected) in [
            // fuzz/regressions/transform_xml_to_json/empty-attribute-without-prefix: `h=""`
            // was `""`, written back as `<h></h>`, which reads as `null`.
            (&b"<a h=\"\"/>"[..], json!({"a": {"h": null}})),
            // The input the fuzzer found (mapping 3).
            (b"<a h=\"\"><a h=\"\">eu\r\r</a></a>", json!({"a": {"h": null, "a": {"h": null, "": "eu"}}})),
            (b"<a h=\" &#9;\" i=\" x \"/>", json!({"a": {"h": null, "i": " x "}})),
            (b"<a h=\"1\"><h>2</h></a>", json!({"a": {"h": ["1", "2"]}})),
            (b"<r x=\"1\"/>", json!({"r": {"x": ["1"]}})),
        ] {
            check_read(xml, &m, Ok(expected));
        }
    }

    #[test]
    fn strings_are_escaped_so_parsers_read_them_back() {
        let m = XmlMapping { declaration: false, ..XmlMapping::default() };
        // (string, as text, as an attribute value)
        for (string, text, attribute) in [
            ("x\ry", "x&#13;y", "x&#13;y"),
            ("x\r\ny", "x&#13;\ny", "x&#13;&#10;y"),
            ("x\ty", "x\ty", "x&#9;y"),
            ("<&>\"'", "&lt;&amp;&gt;\"'", "&lt;&amp;&gt;&quot;'"),
            (
                "\u{85}\u{D7FF}\u{E000}\u{FFFD}\u{10000}",
                "\u{85}\u{D7FF}\u{E000}\u{FFFD}\u{10000}",
                "\u{85}\u{D7FF}\u{E000}\u{FFFD}\u{10000}",
            ),
        ] {
            let doc = json!({"a": {"@x": string, "#text": string}});
            let xml = String::from_utf8(json_to_xml(&doc, &m).unwrap()).unwrap();
            assert_eq!(xml, format!("<a x=\"{attribute}\">{text}</a>"), "{string:?}");
            assert_eq!(xml_to_json(xml.as_bytes(), &m).unwrap(), doc, "{string:?} read back");
        }
        for c in ['\0', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{1F}', '\u{FFFE}', '\u{FFFF}'] {
            let expected = format!("JSON to XML: U+{:04X} is not a character XML 1.0 allows", u32::from(c));
            for doc in [json!({"a": format!("x{c}")}), json!({"a": {"@x": format!("{c}")}}), json!({"a": {"#text": c}})]
            {
                assert_eq!(json_to_xml(&doc, &m).unwrap_err(), expected, "{doc}");
            }
        }
    }

    #[test]
    fn json_to_xml_writes_exactly_one_root_element() {
        let with_root = XmlMapping { root: Some("soap:Envelope".into()), ..XmlMapping::default() };
        let refused = |name: &str| {
            format!(
                "JSON to XML: the root element <{name}> cannot be an array (an XML document has exactly one root element)"
            )
        };
        for (doc, mapping, expected) in [
            // fuzz/regressions/transform_json_to_xml/root-with-empty-array: no element at all.
            (json!([]), &with_root, Err(refused("soap:Envelope"))),
            // fuzz/regressions/transform_json_to_xml/root-with-two-items: two root elements.
            (json!([1, 2]), &with_root, Err(refused("soap:Envelope"))),
            // fuzz/regressions/transform_json_to_xml/single-key-holding-an-array.
            (json!({"a": [1, 2]}), &XmlMapping::default(), Err(refused("a"))),
            (json!({"a": []}), &XmlMapping::default(), Err(refused("a"))),
            (json!({"a": [1, 2]}), &with_root, Ok("<soap:Envelope><a>1</a><a>2</a></soap:Envelope>")),
            (json!({"a": {"b": [1, 2]}}), &XmlMapping::default(), Ok("<a><b>1</b><b>2</b></a>")),
            (json!(1), &with_root, Ok("<soap:Envelope>1</soap:Envelope>")),
        ] {
            let mapping = XmlMapping { declaration: false, ..mapping.clone() };
            let written = json_to_xml(&doc, &mapping).map(|xml| String::from_utf8(xml).unwrap());
            assert_eq!(written, expected.map(str::to_string), "{doc}");
        }
    }

    #[test]
    fn ambiguous_mappings_are_refused() {
        let check = |prefix: &str, text_key: &str, root: Option<&str>, expected: &[&str]| {
            let mapping = XmlMapping {
                attribute_prefix: prefix.into(),
                text_key: text_key.into(),
                root: root.map(str::to_string),
                ..XmlMapping::default()
            };
            let problems: Vec<String> =
                mapping.validate().err().unwrap_or_default().iter().map(ToString::to_string).collect();
            assert_eq!(problems.len(), expected.len(), "{prefix:?} {text_key:?} {root:?}: {problems:?}");
            for (problem, expected) in problems.iter().zip(expected) {
                assert!(problem.starts_with(expected), "{prefix:?} {text_key:?} {root:?}: {problem}");
            }
        };
        check("@", "#text", Some("soap:Envelope"), &[]);
        check("-", "$", None, &[]);
        check("", "", None, &[]);
        check("1", "#", None, &[]);
        check("#", "@text", None, &[]);
        // fuzz/regressions/transform_xml_to_json/child-named-like-text-key: with text_key
        // `value`, `<a><value>t</value></a>` came back as `<a>t</a>`.
        check("@", "value", None, &["text_key: \"value\" is an XML name"]);
        check("_", "#text", None, &["attribute_prefix: \"_\" can start an element name"]);
        check("_", "value", None, &["attribute_prefix:", "text_key: \"value\""]);
        check("a-", "#text", None, &["attribute_prefix: \"a-\""]);
        check("@", "@text", None, &["text_key: \"@text\" starts with the attribute_prefix"]);
        check("@", "@", None, &["text_key: \"@\" starts with"]);
        check("@", "#text", Some("1root"), &["root: \"1root\" is not an XML element name"]);
        // What the ambiguity did: the child element became the text.
        let ambiguous = XmlMapping { text_key: "value".into(), ..XmlMapping::default() };
        let doc = xml_to_json(b"<a><value>t</value></a>", &ambiguous).unwrap();
        let written = json_to_xml(&doc, &XmlMapping { declaration: false, ..ambiguous }).unwrap();
        assert_eq!(written, b"<a>t</a>");
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
