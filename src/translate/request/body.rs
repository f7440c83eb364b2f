//! Reading a request body without a JSON tree of the whole request: the
//! top-level parameters are decoded (they are small), the `messages` array
//! is skipped in a first pass and then handed over one message at a time in
//! a second, so translating a request holds its body, its output and one
//! message — not a `Value` per message (which cost ~40× the body).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{invalid, Result};
use crate::translate::TranslateError;

/// A request's top level, with `messages` left in the body.
pub(in crate::translate) struct Top {
    /// Every top-level parameter except `messages` (the last of duplicates).
    pub params: Map<String, Value>,
    /// Which `messages` key counts (the last, as a JSON object reader
    /// keeps it): its 1-based occurrence, if it is an array.
    messages: Option<usize>,
}

/// First pass: the parameters, and whether `messages` is an array.
pub(in crate::translate) fn top_level(body: &[u8]) -> Result<Top> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = de
        .deserialize_map(TopVisitor)
        .and_then(|top| de.end().map(|()| top));
    match top {
        Ok(top) if top.messages.is_some() => Ok(top),
        Ok(_) => Err(invalid("`messages` must be an array")),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(invalid("the request body must be a JSON object"))
        }
        Err(e) => Err(invalid(format!("request body is not valid JSON: {e}"))),
    }
}

/// Second pass: `each(index, message)` for every message, in order; stops
/// at the first error `each` returns.
pub(in crate::translate) fn for_each_message(
    body: &[u8],
    top: &Top,
    each: &mut dyn FnMut(usize, Value) -> Result<()>,
) -> Result<()> {
    let Some(wanted) = top.messages else {
        return Err(invalid("`messages` must be an array"));
    };
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let visitor = EachVisitor {
        wanted,
        each,
        failed: &mut failed,
    };
    let result = de.deserialize_map(visitor);
    match (failed, result) {
        (Some(e), _) => Err(e),
        (None, Ok(())) => Ok(()),
        // The first pass read this body already; only the pathological
        // (e.g. a message nested past the recursion limit) lands here.
        (None, Err(e)) => Err(invalid(format!("request body is not valid JSON: {e}"))),
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Top, A::Error> {
        let mut top = Top {
            params: Map::new(),
            messages: None,
        };
        let mut seen = 0;
        while let Some(key) = map.next_key::<String>()? {
            if key == "messages" {
                seen += 1;
                let IsArray(array) = map.next_value()?;
                top.messages = array.then_some(seen);
            } else {
                let value: Value = map.next_value()?;
                top.params.insert(key, value);
            }
        }
        Ok(top)
    }
}

/// Whether a value is an array, read without keeping any of it.
struct IsArray(bool);

impl<'de> de::Deserialize<'de> for IsArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(IsArrayVisitor)
    }
}

struct IsArrayVisitor;

impl<'de> Visitor<'de> for IsArrayVisitor {
    type Value = IsArray;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<IsArray, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(IsArray(true))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<IsArray, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(IsArray(false))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
    fn visit_unit<E>(self) -> std::result::Result<IsArray, E> {
        Ok(IsArray(false))
    }
}

struct EachVisitor<'a> {
    wanted: usize,
    each: &'a mut dyn FnMut(usize, Value) -> Result<()>,
    failed: &'a mut Option<TranslateError>,
}

impl<'de> Visitor<'de> for EachVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let EachVisitor {
            wanted,
            each,
            failed,
        } = self;
        let mut seen = 0;
        while let Some(key) = map.next_key::<String>()? {
            if key == "messages" {
                seen += 1;
                if seen == wanted {
                    map.next_value_seed(EachMessage {
                        each: &mut *each,
                        failed: &mut *failed,
                    })?;
                    continue;
                }
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// The `messages` array, one element at a time.
struct EachMessage<'a> {
    each: &'a mut dyn FnMut(usize, Value) -> Result<()>,
    failed: &'a mut Option<TranslateError>,
}

impl<'de> DeserializeSeed<'de> for EachMessage<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EachMessage<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut i = 0;
        while let Some(message) = seq.next_element::<Value>()? {
            if let Err(e) = (self.each)(i, message) {
                *self.failed = Some(e);
                return Err(de::Error::custom("translation failed"));
            }
            i += 1;
        }
        Ok(())
    }
}
