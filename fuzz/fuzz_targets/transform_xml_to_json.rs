//! Drives `gatehouse_transform::xml::xml_to_json` on arbitrary bytes as an upstream's XML
//! body; the first byte picks the mapping (`gatehouse_fuzz::xml_mapping`).
//!
//! Asserts: no panic, no stack overflow (deep documents are refused, not recursed into); a
//! document that converts has one top-level key; converting it back with `json_to_xml`
//! succeeds, and that XML converts to the same JSON (a round trip).
#![no_main]

use gatehouse_transform::xml::{json_to_xml, xml_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, xml)) = data.split_first() else { return };
    let mapping = gatehouse_fuzz::xml_mapping(choice);
    let Ok(json) = xml_to_json(xml, &mapping) else { return };
    assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{json}");
    let again = json_to_xml(&json, &mapping).unwrap_or_else(|e| panic!("{json} does not convert back: {e}"));
    let round_trip = xml_to_json(&again, &mapping)
        .unwrap_or_else(|e| panic!("our own XML {:?} does not parse: {e}", String::from_utf8_lossy(&again)));
    assert_eq!(round_trip, json, "XML {:?}", String::from_utf8_lossy(&again));
});
