//! `labelSelector` and `fieldSelector` query parameters.
//!
//! Label selectors follow `k8s.io/apimachinery/pkg/labels` syntax: `a=b`, `a==b`, `a!=b`, `a`,
//! `!a`, `a in (x,y)`, `a notin (x,y)`, joined by commas (AND). Field selectors accept `=`, `==`
//! and `!=` on any dotted path of the object (`metadata.name`, `metadata.namespace`, `type`,
//! `spec.nodeName`, ...); a missing field compares as `""`. The real API server only accepts a
//! few fields per kind and rejects others with 400; the double is more permissive.

use serde_json::Value;

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Both selectors of a list or watch request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
}

// === impl Selector ===

impl Selector {
    /// Parses a `labelSelector`.
    pub(crate) fn labels(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(Self { requirements })
    }

    /// Parses a `fieldSelector` (only `=`, `==`, `!=`).
    pub(crate) fn fields(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else {
                return Err(format!(
                    "invalid field selector term {term:?}: expected key=value or key!=value"
                ));
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether the object's labels satisfy every requirement.
    pub(crate) fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.requirements
            .iter()
            .all(|r| r.matches(|key| labels.get(key).and_then(Value::as_str)))
    }

    /// Whether the object's fields satisfy every requirement.
    pub(crate) fn matches_fields(&self, object: &Value) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(|key| Some(field_value(object, key).unwrap_or(""))))
    }
}

fn field_value<'a>(object: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(object, |value, segment| value.get(segment))?
        .as_str()
}

/// Splits on commas that are not inside `( )`.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_label_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_string()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    if let Some(open) = term.find('(') {
        let (head, rest) = term.split_at(open);
        let values = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("invalid label selector term {term:?}: unbalanced parentheses"))?
            .split(',')
            .map(|v| v.trim().to_string())
            .collect();
        let mut words = head.split_whitespace();
        return match (words.next(), words.next(), words.next()) {
            (Some(key), Some("in"), None) => Ok(Requirement::In(key.to_string(), values)),
            (Some(key), Some("notin"), None) => Ok(Requirement::NotIn(key.to_string(), values)),
            _ => Err(format!("invalid label selector term {term:?}")),
        };
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("invalid label selector term {term:?}"));
    }
    Ok(Requirement::Exists(term.to_string()))
}

// === impl Requirement ===

impl Requirement {
    fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::Equals(key, value) => lookup(key) == Some(value.as_str()),
            // `a!=b` also matches objects without the label (apimachinery semantics).
            Self::NotEquals(key, value) => lookup(key) != Some(value.as_str()),
            Self::In(key, values) => lookup(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Self::NotIn(key, values) => lookup(key).is_none_or(|v| values.iter().all(|x| x != v)),
            Self::Exists(key) => lookup(key).is_some(),
            Self::DoesNotExist(key) => lookup(key).is_none(),
        }
    }
}

// === impl Filter ===

impl Filter {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str().unwrap_or("") == ns);
        namespace_ok && self.labels.matches_labels(object) && self.fields.matches_fields(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web", "tier": "front"}},
            "type": "kubernetes.io/tls",
        })
    }

    #[test]
    fn label_selectors() {
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("tier in (front, back)", true),
            ("tier in (back)", false),
            ("tier notin (back),app", true),
            ("missing notin (x)", true),
        ];
        for (text, want) in cases {
            let selector = Selector::labels(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches_labels(&obj()), want, "{text}");
        }
        assert!(Selector::labels("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let cases = [
            ("metadata.name=web", true),
            ("metadata.name!=web", false),
            ("metadata.namespace=shop,type=kubernetes.io/tls", true),
            ("type=Opaque", false),
            ("type!=Opaque", true),
            ("spec.nodeName=", true),
        ];
        for (text, want) in cases {
            let selector = Selector::fields(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches_fields(&obj()), want, "{text}");
        }
        assert!(Selector::fields("metadata.name").is_err());
    }
}
