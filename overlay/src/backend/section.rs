//! A JSON object of `net-conf.json` (the file itself, or its `Backend`
//! section), read the way flannel's Go decoder reads it: keys matched
//! case-insensitively (an exact match wins), every error naming the field.

use serde_json::{Map, Value};

/// A problem with one field, named as in the file (`Backend.VNI`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SectionError {
    /// The field, with its section (`Backend.Port`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// One JSON object and the prefix its fields are named with.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Section<'a> {
    /// `prefix`: `""` for the file, `"Backend"` for its backend section.
    pub fn new(obj: &'a Map<String, Value>, prefix: &'a str) -> Section<'a> {
        Section { obj, prefix }
    }

    /// The field's full name.
    pub fn field(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// An error for `key`.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> SectionError {
        SectionError {
            field: self.field(key),
            reason: reason.into(),
        }
    }

    /// The value of `key` (case-insensitive; an exact match wins), with
    /// the key as written.
    pub fn get(&self, key: &str) -> Option<(&'a str, &'a Value)> {
        self.obj
            .get_key_value(key)
            .or_else(|| self.obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// A boolean, `default` when absent or null.
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool, SectionError> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(default),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((_, v)) => Err(self.error(key, format!("{v} is not true or false"))),
        }
    }

    /// A non-negative integer, if present.
    pub fn number(&self, key: &str) -> Result<Option<u64>, SectionError> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, v)) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("{v} is not a non-negative integer"))),
        }
    }

    /// A string, if present.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, SectionError> {
        match self.get(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((_, v)) => Err(self.error(key, format!("{v} is not a string"))),
        }
    }

    /// A UDP port, if present: 0 means `default` (flannel's reading).
    pub fn port(&self, key: &str, default: u16) -> Result<Option<u16>, SectionError> {
        match self.number(key)? {
            None => Ok(None),
            Some(0) => Ok(Some(default)),
            Some(p) => u16::try_from(p)
                .map(Some)
                .map_err(|_| self.error(key, format!("{p} is not a UDP port"))),
        }
    }

    /// The keys present that are not in `known` (case-insensitive).
    pub fn unknown(&self, known: &[&str]) -> Vec<&'a str> {
        self.obj
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .map(String::as_str)
            .collect()
    }
}
