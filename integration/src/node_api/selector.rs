//! Label and field selectors, as the apiserver parses them from
//! `labelSelector=` and `fieldSelector=`.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label or field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    field: bool,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
    /// `a notin (x)`, `a`, `!a`, comma-separated.
    pub fn labels(text: &str) -> Result<Selector, String> {
        let requirements = split_top_level(text)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(Selector {
            field: false,
            requirements,
        })
    }

    /// Parses a field selector: `path=value`, `path==value`, `path!=value`,
    /// comma-separated, where `path` is a dotted path into the object
    /// (`metadata.name`, `spec.unschedulable`, ...).
    pub fn fields(text: &str) -> Result<Selector, String> {
        let requirements = split_top_level(text)
            .into_iter()
            .map(|part| match parse_requirement(part)? {
                r @ (Requirement::Equals(..) | Requirement::NotEquals(..)) => Ok(r),
                _ => Err(format!("unsupported field selector {part:?}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Selector {
            field: true,
            requirements,
        })
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let key = match r {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => k,
            };
            let found = self.lookup(object, key);
            match r {
                Requirement::Equals(_, v) => found.as_deref() == Some(v.as_str()),
                Requirement::NotEquals(_, v) => found.as_deref() != Some(v.as_str()),
                Requirement::In(_, vs) => found.is_some_and(|x| vs.contains(&x)),
                Requirement::NotIn(_, vs) => !found.is_some_and(|x| vs.contains(&x)),
                Requirement::Exists(_) => found.is_some(),
                Requirement::DoesNotExist(_) => found.is_none(),
            }
        })
    }

    fn lookup(&self, object: &Value, key: &str) -> Option<String> {
        let value = if self.field {
            let mut cur = object;
            for part in key.split('.') {
                cur = cur.get(part)?;
            }
            cur
        } else {
            object.get("metadata")?.get("labels")?.get(key)?
        };
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

/// Splits on commas that are not inside parentheses; drops empty parts.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let owned = |s: &str| s.trim().to_string();
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(owned(k), owned(v)));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(owned(k), owned(v)));
    }
    for (word, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = part.split_once(word) {
            let list = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("bad set in selector {part:?}"))?;
            let values = list.split(',').map(owned).filter(|v| !v.is_empty());
            let (k, values) = (owned(k), values.collect());
            return Ok(if negate {
                Requirement::NotIn(k, values)
            } else {
                Requirement::In(k, values)
            });
        }
    }
    let valid = |k: &str| !k.is_empty() && !k.contains(char::is_whitespace);
    match part.strip_prefix('!') {
        Some(k) if valid(k.trim()) => Ok(Requirement::DoesNotExist(owned(k))),
        None if valid(part) => Ok(Requirement::Exists(owned(part))),
        _ => Err(format!("bad selector {part:?}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let node = json!({"metadata": {"name": "n1", "labels": {"role": "worker", "zone": "a"}}});
        let yes = [
            "",
            "role=worker",
            "role==worker,zone",
            "zone in (a, b)",
            "zone notin (c),!gpu",
            "role!=master",
        ];
        for s in yes {
            assert!(Selector::labels(s).unwrap().matches(&node), "{s}");
        }
        for s in [
            "role=master",
            "gpu",
            "!zone",
            "zone in (b)",
            "zone notin (a,b)",
        ] {
            assert!(!Selector::labels(s).unwrap().matches(&node), "{s}");
        }
        assert!(Selector::labels("a b").is_err());
        assert!(Selector::labels("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        assert!(Selector::fields("metadata.name=n1").unwrap().matches(&node));
        assert!(!Selector::fields("metadata.name=n2").unwrap().matches(&node));
        assert!(
            Selector::fields("metadata.name!=n2,spec.unschedulable=true")
                .unwrap()
                .matches(&node)
        );
        assert!(Selector::fields("metadata.name").is_err());
    }
}
