//! A small validator for the OpenAPI v3 subset that structural CRD schemas use (type,
//! properties, required, enum, bounds, lengths, patterns-free), so examples and invalid
//! manifests can be checked against the generated schema without a cluster. Messages follow the
//! apiserver's shape: `spec.sampling.rate: Invalid value: 2: must be <= 1`.
//!
//! CEL rules (`x-kubernetes-validations`) are not evaluated here: [`crate::TracedServiceSpec::validate`]
//! mirrors them, and the control-plane tests run them in a real apiserver.

use serde_json::Value;

/// Validates `value` against `schema`; returns every violation found.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

/// The openAPIV3Schema of the CRD's first version.
pub fn crd_schema(crd: &Value) -> Option<&Value> {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errors.push(format!("{here}: Invalid value: null: must not be null"));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(format!(
                "{here}: Invalid value: {value}: must be an integer or a string"
            ));
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(value);
        let ok = got == want || (want == "number" && got == "integer");
        if !ok {
            errors.push(format!(
                "{here}: Invalid value: \"{got}\": {here} in body must be of type {want}"
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{here}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && x < min
        {
            errors.push(format!("{here}: Invalid value: {value}: must be >= {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && x > max
        {
            errors.push(format!("{here}: Invalid value: {value}: must be <= {max}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!(
                "{here}: Invalid value: {value}: should be at least {min} chars long"
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!(
                "{here}: Too long: may not be more than {max} bytes"
            ));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(format!(
                "{here}: Invalid value: {}: should have at least {min} items",
                items.len()
            ));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            errors.push(format!(
                "{here}: Too many: {}: must have at most {max} items",
                items.len()
            ));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(obj) = value.as_object() {
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(key) {
                    errors.push(format!("{}: Required value", join(path, key)));
                }
            }
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
            && (obj.len() as u64) < min
        {
            errors.push(format!(
                "{here}: Invalid value: should have at least {min} properties"
            ));
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        for (key, v) in obj {
            let child = join(path, key);
            if let Some(s) = props.and_then(|p| p.get(key)) {
                check(s, v, &child, errors);
            } else if let Some(s) = additional.filter(|a| a.is_object()) {
                check(s, v, &child, errors);
            } else {
                let envelope =
                    path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                if preserve || envelope {
                    continue;
                }
                // kubectl applies with strict field validation: unknown fields are errors.
                errors.push(format!("{child}: unknown field \"{child}\""));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_type_bounds_enum_required_and_unknown_fields() {
        let schema = json!({
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {"type": "object", "properties": {
                "rate": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                "proto": {"type": "string", "enum": ["http", "tcp"]},
                "ports": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            }}}
        });
        assert!(validate(&schema, &json!({"spec": {"rate": 1, "proto": "tcp"}})).is_empty());
        let errs = validate(
            &schema,
            &json!({"spec": {"rate": 2, "proto": "udp", "ports": [0], "x": 1}}),
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.rate: Invalid value: 2: must be <= 1"))
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.proto: Unsupported value: \"udp\""))
        );
        assert!(errs.iter().any(|e| e.starts_with("spec.ports[0]:")));
        assert!(errs.iter().any(|e| e.contains("unknown field \"spec.x\"")));
        assert_eq!(
            validate(&schema, &json!({})),
            vec!["spec: Required value".to_owned()]
        );
    }
}
