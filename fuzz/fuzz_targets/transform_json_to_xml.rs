//! Drives `gatehouse_transform::xml::json_to_xml` on arbitrary bytes as a client's JSON body;
//! the first byte picks the mapping (`gatehouse_fuzz::xml_mapping`) and whether the document
//! is wrapped in a `root` element.
//!
//! Asserts: no panic; the XML written for any JSON is well-formed: `xml_to_json` reads it back.
#![no_main]

use gatehouse_transform::xml::{json_to_xml, xml_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let mut mapping = gatehouse_fuzz::xml_mapping(choice);
    if choice & 0x80 != 0 {
        mapping.root = Some("soap:Envelope".into());
    }
    let Ok(xml) = json_to_xml(&json, &mapping) else { return };
    if let Err(e) = xml_to_json(&xml, &mapping) {
        panic!("XML written for {json} does not parse: {e}\n{}", String::from_utf8_lossy(&xml));
    }
});
