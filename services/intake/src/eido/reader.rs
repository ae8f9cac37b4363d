//! Reading an EIDO document: the JSON reader that names each problem by its path, and the
//! PIDF-LO (XML) location pieces an EIDO may carry.

use super::*;

/// Reads JSON values, collecting every problem with its path.
pub(super) struct Reader {
    pub(super) violations: Vec<FieldViolation>,
}

pub(super) fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    pub(super) fn add(&mut self, path: impl Into<String>, why: impl Into<String>) {
        self.violations.push(FieldViolation::new(path, why));
    }

    pub(super) fn object<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
    ) -> Option<&'a Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.add(path, "must be an object");
        }
        object
    }

    pub(super) fn string<'a>(
        &mut self,
        map: &'a Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a str> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.add(at(path, key), "is required");
                }
                None
            }
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.add(at(path, key), "must be a string");
                None
            }
        }
    }

    pub(super) fn time(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<DateTime<Utc>> {
        let text = self.string(map, path, key, required)?;
        match DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                self.add(
                    at(path, key),
                    "must be an RFC 3339 date-time, for example 2021-04-30T14:43:49.439-04:00",
                );
                None
            }
        }
    }

    pub(super) fn array<'a>(
        &mut self,
        map: &'a Map<String, Value>,
        path: &str,
        key: &str,
    ) -> &'a [Value] {
        match map.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.add(at(path, key), "must be an array");
                &[]
            }
        }
    }

    pub(super) fn strings(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in self.array(map, path, key).iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.add(format!("{}[{i}]", at(path, key)), "must be a string"),
            }
        }
        out
    }

    pub(super) fn reference(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.add(at(path, key), "is required");
                }
                None
            }
            Some(Value::Object(reference)) => self
                .string(reference, &at(path, key), "$ref", true)
                .map(str::to_owned),
            Some(_) => {
                self.add(at(path, key), "must be an object with a $ref");
                None
            }
        }
    }

    pub(super) fn references(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let items = self.array(map, path, key);
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{}[{i}]", at(path, key));
            if let Some(reference) = self.object(item, &item_path)
                && let Some(id) = self.string(reference, &item_path, "$ref", true)
            {
                out.push(id.to_owned());
            }
        }
        out
    }

    /// The common prologue every data component carries; returns its `$id`.
    pub(super) fn prologue(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        let id = self.string(map, path, "$id", true).map(str::to_owned);
        if id.as_deref() == Some("") {
            self.add(at(path, "$id"), "must not be empty");
        }
        self.time(map, path, "lastUpdateTimeStamp", true);
        self.reference(map, path, "updatedByAgencyReference", true);
        self.reference(map, path, "updatedByAgentReference", false);
        id
    }

    /// The components of one kind: each must be an object with a prologue.
    pub(super) fn components<'a>(
        &mut self,
        root: &'a Map<String, Value>,
        key: &str,
    ) -> Vec<(String, String, &'a Map<String, Value>)> {
        let mut out = Vec::new();
        for (i, item) in self.array(root, "", key).iter().enumerate() {
            let path = format!("{key}[{i}]");
            if let Some(map) = self.object(item, &path) {
                let id = self.prologue(map, &path).unwrap_or_default();
                out.push((path, id, map));
            }
        }
        out
    }
}

/// The inner text of every element whose local name (without namespace prefix) is `local`.
/// A small reader for the few PIDF-LO elements Relay needs; not a general XML parser.
pub(super) fn elements<'a>(xml: &'a str, local: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    let mut offset = 0;
    while let Some(start) = rest.find('<') {
        let tag_start = offset + start + 1;
        let after = &xml[tag_start..];
        let name_len = after
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let local_name = name.rsplit(':').next().unwrap_or(name);
        let mut next = tag_start;
        if local_name == local && !name.starts_with('/') {
            if let Some(end_of_tag) = after.find('>') {
                let open_end = tag_start + end_of_tag + 1;
                if after[..end_of_tag].ends_with('/') {
                    out.push("");
                    next = open_end;
                } else {
                    let close = format!("</{name}>");
                    if let Some(close_at) = xml[open_end..].find(&close) {
                        out.push(&xml[open_end..open_end + close_at]);
                        next = open_end + close_at + close.len();
                    } else {
                        next = open_end;
                    }
                }
            } else {
                break;
            }
        }
        offset = next;
        rest = &xml[next..];
    }
    out
}

pub(super) fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The first geodetic point (`gml:pos`, "latitude longitude [altitude]") in a PIDF-LO.
pub(super) fn pidf_point(xml: &str) -> Result<Option<GeoPoint>, String> {
    let Some(pos) = elements(xml, "pos").into_iter().next() else {
        return Ok(None);
    };
    let numbers: Vec<Option<f64>> = pos
        .split_whitespace()
        .map(|n| n.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect();
    match numbers.as_slice() {
        [Some(latitude), Some(longitude)] | [Some(latitude), Some(longitude), Some(_)] => {
            if !(-90.0..=90.0).contains(latitude) {
                Err("gml:pos latitude must be a number from -90 to 90 (WGS84 degrees)".into())
            } else if !(-180.0..=180.0).contains(longitude) {
                Err("gml:pos longitude must be a number from -180 to 180 (WGS84 degrees)".into())
            } else {
                Ok(Some(GeoPoint {
                    latitude: *latitude,
                    longitude: *longitude,
                }))
            }
        }
        _ => Err("gml:pos must hold 'latitude longitude' in WGS84 degrees".into()),
    }
}

/// A civic address (RFC 5139 / RFC 6848 elements) as one line, when the PIDF-LO has one.
pub(super) fn pidf_civic_address(xml: &str) -> Option<String> {
    let civic = elements(xml, "civicAddress").into_iter().next()?;
    let get = |key: &str| {
        elements(civic, key)
            .into_iter()
            .next()
            .map(|v| unescape(v.trim()))
            .filter(|v| !v.is_empty())
    };
    let join = |keys: &[&str]| {
        keys.iter()
            .filter_map(|k| get(k))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let street = join(&["HNO", "HNS", "PRD", "RD", "STS", "POD", "POM"]);
    let unit = join(&["BLD", "FLR", "UNIT", "ROOM"]);
    let place = join(&["LMK", "NAM", "LOC"]);
    let city = join(&["A3", "A1", "PC"]);
    let line = [
        street,
        unit,
        place,
        city,
        get("country").unwrap_or_default(),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    (!line.is_empty()).then_some(line)
}
