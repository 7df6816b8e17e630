//! The Commerce API's default format: `/v1` resources answer XML unless the request asks
//! for JSON (`Accept: application/json`, `format=json`, or a `.json` path suffix;
//! reference §2, F4). The handlers build JSON; this module decides which format a request
//! gets and renders a JSON body as simple, well-formed XML: the root element is the
//! body's one top-level key (`<shopper>`, `<cart>`, `<errors>`), objects become child
//! elements, an array repeats its key's element (`<lineItem>` once per line), `null` is an
//! empty element.

use http::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use http::HeaderValue;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::respond::{full_body, param, MockResponse, Params};

/// The format a resource request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The API's default.
    Xml,
    /// Asked for by `Accept`, `format=json` or `.json`.
    Json,
}

impl Format {
    /// What the request asked for.
    pub fn of(path: &str, headers: &HeaderMap, query: &Params) -> Format {
        let accepts_json = headers.get_all(ACCEPT).iter().any(|value| {
            value.to_str().is_ok_and(|text| text.to_ascii_lowercase().contains("application/json"))
        });
        let asked = accepts_json
            || param(query, "format").is_some_and(|format| format.eq_ignore_ascii_case("json"))
            || path.ends_with(".json");
        if asked {
            Format::Json
        } else {
            Format::Xml
        }
    }
}

/// Re-renders a JSON response as XML (same status and headers, `application/xml`).
/// Anything else (an empty body, a stream, a body that is not one JSON object with one
/// key) is returned unchanged.
pub async fn into_xml(response: MockResponse) -> MockResponse {
    let is_json = response.headers().get(CONTENT_TYPE).is_some_and(|value| value == "application/json");
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The body type's error is `Infallible`: collecting cannot fail.
    let bytes = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let document = serde_json::from_slice::<Value>(&bytes).ok().and_then(|value| render(&value));
    let Some(document) = document else {
        return MockResponse::from_parts(parts, full_body(bytes));
    };
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    MockResponse::from_parts(parts, full_body(document))
}

/// `{"root": value}` as an XML document, `None` for any other shape.
pub fn render(body: &Value) -> Option<String> {
    let object = body.as_object()?;
    let mut entries = object.iter();
    let (root, value) = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    let mut document = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n");
    element(&mut document, root, value);
    Some(document)
}

fn element(out: &mut String, name: &str, value: &Value) {
    let name = element_name(name);
    match value {
        Value::Array(items) => {
            for item in items {
                element(out, &name, item);
            }
        }
        Value::Null => {
            out.push_str(&format!("<{name}/>"));
        }
        Value::Object(children) => {
            out.push_str(&format!("<{name}>"));
            // JSON objects here are sorted by key; the API's XML puts the link first.
            let (links, rest): (Vec<_>, Vec<_>) =
                children.iter().partition(|(child, _)| matches!(child.as_str(), "uri" | "relation"));
            for (child, child_value) in links.into_iter().chain(rest) {
                element(out, child, child_value);
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::String(text) => out.push_str(&format!("<{name}>{}</{name}>", escape(text))),
        Value::Bool(flag) => out.push_str(&format!("<{name}>{flag}</{name}>")),
        Value::Number(number) => out.push_str(&format!("<{name}>{number}</{name}>")),
    }
}

/// A valid XML name: letters, digits, `_`, `-`, `.`; anything else becomes `_`, and a
/// name that would not start with a letter or `_` gets a leading `_`.
fn element_name(name: &str) -> String {
    let mut cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect();
    if !cleaned.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        cleaned.insert(0, '_');
    }
    cleaned
}

/// Escapes markup characters and drops characters XML 1.0 cannot carry.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(character),
            control if control.is_control() && u32::from(control) < 0x20 => {}
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_render_as_the_api_shape() {
        let body = json!({"errors": {"error": [{"relation": "r", "code": "invalid_token", "description": "a < b"}]}});
        let xml = render(&body).expect("one root");
        assert!(xml.ends_with(
            "<errors><error><relation>r</relation><code>invalid_token</code><description>a &lt; b</description></error></errors>"
        ));
    }

    #[test]
    fn arrays_repeat_and_null_is_empty() {
        let body = json!({"cart": {"lineItems": {"lineItem": [{"id": 1}, {"id": 2}]}, "x": null}});
        let xml = render(&body).expect("one root");
        assert!(xml.contains(
            "<lineItems><lineItem><id>1</id></lineItem><lineItem><id>2</id></lineItem></lineItems>"
        ));
        assert!(xml.contains("<x/>"));
        assert!(render(&json!({"a": 1, "b": 2})).is_none());
    }

    #[test]
    fn json_is_asked_three_ways() {
        let mut headers = HeaderMap::new();
        let none = Params::new();
        assert_eq!(Format::of("/v1/shoppers/me", &headers, &none), Format::Xml);
        assert_eq!(Format::of("/v1/shoppers/me.json", &headers, &none), Format::Json);
        let format = vec![("format".to_owned(), "json".to_owned())];
        assert_eq!(Format::of("/v1/shoppers/me", &headers, &format), Format::Json);
        headers.insert(ACCEPT, HeaderValue::from_static("text/html, Application/JSON;q=0.9"));
        assert_eq!(Format::of("/v1/shoppers/me", &headers, &none), Format::Json);
    }

    #[test]
    fn names_and_text_are_made_safe() {
        assert_eq!(element_name("1a b"), "_1a_b");
        assert_eq!(escape("x\u{1}y&"), "xy&amp;");
    }
}
