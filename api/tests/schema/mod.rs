//! What the OpenAPI tests share: the document, the operation that serves
//! a request, and a JSON Schema (2020-12, as OpenAPI 3.1 uses it) check of
//! a value for the keywords the Ferry document uses. A keyword the check
//! does not know fails it instead of being skipped, so a schema can never
//! pass by being misread.

use serde_json::Value;

/// The document the code builds, as JSON.
pub fn document() -> Value {
    serde_json::from_str(ferry_api::openapi::json()).unwrap()
}

/// The operation of `doc` that serves `method path` (a concrete path):
/// its template, preferring static segments as Rocket's ranking does.
pub fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> (String, &'d Value) {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &String, &Value)> = None;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let matches = parts
            .iter()
            .zip(&segments)
            .all(|(t, s)| t.starts_with('{') || t == s);
        let statics = parts.iter().filter(|t| !t.starts_with('{')).count();
        if matches && item.get(method).is_some() && best.is_none_or(|(n, _, _)| statics > n) {
            best = Some((statics, template, &item[method]));
        }
    }
    let (_, template, op) = best.unwrap_or_else(|| panic!("{method} {path} is not documented"));
    (template.clone(), op)
}

/// Keywords that say nothing about validity.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "example",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
];

/// Checks `value` against `schema`, whose `$ref`s point into `doc`.
pub fn check(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    at(doc, schema, value, "")
}

fn resolve<'d>(doc: &'d Value, reference: &str) -> Result<&'d Value, String> {
    let pointer = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("unsupported $ref {reference}"))?;
    doc.pointer(pointer)
        .ok_or_else(|| format!("$ref {reference} points nowhere"))
}

fn type_matches(name: &str, value: &Value) -> Result<bool, String> {
    Ok(match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => return Err(format!("unknown type {other}")),
    })
}

fn at(doc: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let here = if path.is_empty() { "/" } else { path };
    let schema = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{here}: nothing is allowed here")),
        Value::Object(schema) => schema,
        _ => return Err(format!("{here}: a schema that is not an object")),
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$ref" => at(
                doc,
                resolve(doc, rule.as_str().unwrap_or_default())?,
                value,
                path,
            )?,
            "type" => {
                let names: Vec<&str> = match rule {
                    Value::String(name) => vec![name.as_str()],
                    Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{here}: bad type {rule}")),
                };
                let mut any = false;
                for name in &names {
                    any |= type_matches(name, value)?;
                }
                if !any {
                    return Err(format!("{here}: {value} is not of type {rule}"));
                }
            }
            "enum" => {
                if !rule
                    .as_array()
                    .is_some_and(|options| options.contains(value))
                {
                    return Err(format!("{here}: {value} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    return Err(format!("{here}: {value} is not {rule}"));
                }
            }
            "properties" => {
                if let (Some(properties), Some(object)) = (rule.as_object(), value.as_object()) {
                    for (name, property) in properties {
                        if let Some(v) = object.get(name) {
                            at(doc, property, v, &format!("{path}/{name}"))?;
                        }
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().into_iter().flatten() {
                        let name = name.as_str().unwrap_or_default();
                        if !object.contains_key(name) {
                            return Err(format!("{here}: `{name}` is required"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (name, v) in object {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            at(doc, rule, v, &format!("{path}/{name}"))?;
                        }
                    }
                }
            }
            "propertyNames" => {
                for name in value.as_object().into_iter().flatten().map(|(k, _)| k) {
                    at(
                        doc,
                        rule,
                        &Value::String(name.clone()),
                        &format!("{path}/{name}"),
                    )?;
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    at(doc, rule, item, &format!("{path}/{i}"))?;
                }
            }
            "minItems" | "maxItems" => {
                if let Some(items) = value.as_array() {
                    let n = rule.as_u64().unwrap_or_default() as usize;
                    let ok = if keyword == "minItems" {
                        items.len() >= n
                    } else {
                        items.len() <= n
                    };
                    if !ok {
                        return Err(format!(
                            "{here}: {} items breaks {keyword} {n}",
                            items.len()
                        ));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Some(text) = value.as_str() {
                    let n = rule.as_u64().unwrap_or_default() as usize;
                    let len = text.chars().count();
                    let ok = if keyword == "minLength" {
                        len >= n
                    } else {
                        len <= n
                    };
                    if !ok {
                        return Err(format!("{here}: length {len} breaks {keyword} {n}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let (Some(v), Some(bound)) = (value.as_f64(), rule.as_f64()) {
                    let ok = if keyword == "minimum" {
                        v >= bound
                    } else {
                        v <= bound
                    };
                    if !ok {
                        return Err(format!("{here}: {v} breaks {keyword} {bound}"));
                    }
                }
            }
            "pattern" => {
                if let Some(text) = value.as_str() {
                    let pattern = rule.as_str().unwrap_or_default();
                    let regex = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
                    if !regex.is_match(text) {
                        return Err(format!("{here}: {text:?} does not match {pattern}"));
                    }
                }
            }
            "format" => {
                if let Some(text) = value.as_str() {
                    let ok = match rule.as_str().unwrap_or_default() {
                        "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                        "uuid" => uuid::Uuid::parse_str(text).is_ok(),
                        _ => true,
                    };
                    if !ok {
                        return Err(format!("{here}: {text:?} is not a {rule}"));
                    }
                }
            }
            "allOf" => {
                for sub in rule.as_array().into_iter().flatten() {
                    at(doc, sub, value, path)?;
                }
            }
            "anyOf" | "oneOf" => {
                let subs = rule.as_array().cloned().unwrap_or_default();
                let errors: Vec<String> = subs
                    .iter()
                    .filter_map(|sub| at(doc, sub, value, path).err())
                    .collect();
                let passed = subs.len() - errors.len();
                if passed == 0 {
                    return Err(format!("{here}: matches none of {keyword}: {errors:?}"));
                }
                if keyword == "oneOf" && passed > 1 {
                    return Err(format!("{here}: matches {passed} of oneOf"));
                }
            }
            other if ANNOTATIONS.contains(&other) => {}
            other => return Err(format!("{here}: unsupported keyword {other}")),
        }
    }
    Ok(())
}
