//! Checking real responses against the agent's `OpenAPI` document: the subset of JSON Schema
//! that the generated document uses (`$ref`, `type` (also as a list), `properties`,
//! `required`, `additionalProperties`, `items`, `oneOf`/`anyOf`/`allOf`, `minimum`).

use serde_json::Value;

/// The schema of the `status` response of `method path` (a template such as
/// `/api/apps/{name}`) for `application/json`, if the document has one.
pub fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Option<Value> {
    doc["paths"][path][method.to_ascii_lowercase()]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"]
        .as_object()
        .map(|s| Value::Object(s.clone()))
}

/// Every way `value` differs from `schema` (empty when it conforms), with JSON paths.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(doc, schema, value, "$", true, &mut problems);
    problems
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(target.is_object(), "dangling $ref {reference}");
            resolve(doc, target)
        }
        None => schema,
    }
}

fn type_matches(kind: &str, value: &Value) -> bool {
    match kind {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown schema type {other}"),
    }
}

/// `strict`: a property the schema does not list is a problem (off inside `allOf`, whose
/// parts each list only some of the object's properties).
fn check(
    doc: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    strict: bool,
    problems: &mut Vec<String>,
) {
    let schema = resolve(doc, schema);
    if let Some(types) = schema.get("type") {
        let kinds: Vec<&str> = match types {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let nullable = schema["nullable"] == true && value.is_null();
        if !kinds.is_empty() && !nullable && !kinds.iter().any(|k| type_matches(k, value)) {
            problems.push(format!("{at}: {value} is not of type {types}"));
            return;
        }
    }
    if let (Some(minimum), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < minimum
    {
        problems.push(format!("{at}: {n} is below the minimum {minimum}"));
    }
    if let Some(all) = schema["allOf"].as_array() {
        for sub in all {
            check(doc, sub, value, at, false, problems);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let matching = options
                .iter()
                .filter(|sub| validate_at(doc, sub, value, at).is_empty())
                .count();
            let ok = if key == "oneOf" {
                matching == 1
            } else {
                matching >= 1
            };
            if !ok {
                problems.push(format!(
                    "{at}: {value} matches {matching} of the {key} schemas"
                ));
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        if let Some(required) = schema["required"].as_array() {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    problems.push(format!("{at}: required property {name} is missing"));
                }
            }
        }
        for (name, item) in object {
            let path = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => check(doc, sub, item, &path, true, problems),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => {
                        problems.push(format!("{path}: property not in the schema"));
                    }
                    sub @ Value::Object(_) => check(doc, sub, item, &path, true, problems),
                    _ => {
                        if strict && properties.is_some() && schema.get("allOf").is_none() {
                            problems.push(format!("{path}: property not in the schema"));
                        }
                    }
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), true, problems);
        }
    }
}

fn validate_at(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    check(doc, schema, value, at, true, &mut problems);
    problems
}
