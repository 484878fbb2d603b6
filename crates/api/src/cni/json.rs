//! Field-by-field reading of a JSON object, so that every error names the field's full
//! path (`ipam.ranges[0][1].subnet`), what was found and what was expected.

use super::error::CniError;
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

pub(crate) struct Obj<'a> {
    pub path: String,
    pub map: &'a Map<String, Value>,
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn wrong(path: &str, v: &Value, expected: &str) -> CniError {
    CniError::invalid(format!(
        "field \"{path}\": expected {expected}, found {} ({v})",
        kind(v)
    ))
}

impl<'a> Obj<'a> {
    pub fn root(v: &'a Value) -> Result<Obj<'a>, CniError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path: String::new(),
                map,
            }),
            other => Err(CniError::new(
                super::ErrorCode::Decode,
                format!(
                    "network config must be a JSON object, found {}",
                    kind(other)
                ),
            )),
        }
    }

    pub fn at(path: String, v: &'a Value) -> Result<Obj<'a>, CniError> {
        match v {
            Value::Object(map) => Ok(Obj { path, map }),
            other => Err(wrong(&path, other, "an object")),
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// A present, non-null value.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(&self.path_of(key), v, "a string")),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<&'a str, CniError> {
        self.str(key)?.ok_or_else(|| {
            CniError::invalid(format!("field \"{}\" is required", self.path_of(key)))
        })
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(&self.path_of(key), v, "true or false")),
        }
    }

    pub fn uint(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                Some(n) => Err(CniError::invalid(format!(
                    "field \"{}\": {n} is out of range {min}..={max}",
                    self.path_of(key)
                ))),
                None => Err(wrong(
                    &self.path_of(key),
                    v,
                    &format!("an integer {min}..={max}"),
                )),
            },
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong(&self.path_of(key), v, "an array")),
        }
    }

    pub fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Obj::at(self.path_of(key), v).map(Some),
        }
    }

    pub fn ipv4(&self, key: &str) -> Result<Option<Ipv4Addr>, CniError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_ipv4(&self.path_of(key), s).map(Some),
        }
    }

    pub fn cidr(&self, key: &str) -> Result<Option<ipnet::Ipv4Net>, CniError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_cidr(&self.path_of(key), s).map(Some),
        }
    }
}

pub(crate) fn parse_ipv4(path: &str, s: &str) -> Result<Ipv4Addr, CniError> {
    parse_v4(path, s, "an IPv4 address (e.g. \"10.244.1.1\")")
}

pub(crate) fn parse_cidr(path: &str, s: &str) -> Result<ipnet::Ipv4Net, CniError> {
    parse_v4(path, s, "an IPv4 CIDR (e.g. \"10.244.1.0/24\")")
}

/// IPv6 input is refused as unsupported (code 2), anything else unparsable as invalid (7).
fn parse_v4<T: std::str::FromStr>(path: &str, s: &str, expected: &str) -> Result<T, CniError> {
    s.parse().map_err(|_| {
        if s.contains(':') {
            CniError::new(
                super::ErrorCode::UnsupportedField,
                format!("field \"{path}\": \"{s}\" is IPv6; twill-cni supports IPv4 only for now"),
            )
        } else {
            CniError::invalid(format!("field \"{path}\": \"{s}\" is not {expected}"))
        }
    })
}
