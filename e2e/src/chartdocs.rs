//! The chart's values table, generated from the comments in `helm/sidetrace/values.yaml`
//! (`make chart-docs`, checked for drift by `e2e/tests/chart.rs`), so the documentation a user
//! reads is the file helm reads.
//!
//! The convention is helm-docs': a comment that starts with `# -- ` describes the key on the next
//! line, and the plain `# ` lines right after it continue the description. Every key gets a row
//! with its dotted path, its type and its default as written; a key without a description is an
//! error, so a new value cannot go undocumented. values.yaml is ours and plain block YAML (two
//! spaces per level, flow style only for leaf values), which a line reader handles without a
//! YAML library that keeps comments; [`values_table`] cross-checks its keys against serde_yaml's
//! reading of the same file.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The README's generated section lies between these lines.
pub const BEGIN: &str =
    "<!-- values:begin — generated from values.yaml by `make chart-docs`; edit values.yaml -->";
/// End of the generated section.
pub const END: &str = "<!-- values:end -->";

/// One documented value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Dotted path, e.g. `images.registry`.
    pub key: String,
    /// string, int, float, bool, list, object.
    pub kind: &'static str,
    /// The default as written in values.yaml (empty for a map with keys below it).
    pub default: String,
    /// The `# --` comment.
    pub description: String,
}

/// The rows of values.yaml, in file order.
pub fn rows(values: &str) -> Result<Vec<Row>, String> {
    let lines: Vec<&str> = values.lines().collect();
    let mut out = Vec::new();
    // (indent, key) of the maps enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(c) = trimmed.strip_prefix('#') {
            let c = c.strip_prefix(' ').unwrap_or(c);
            if let Some(start) = c.strip_prefix("-- ") {
                pending = Some(start.trim().to_owned());
            } else if let Some(p) = pending.as_mut() {
                p.push(' ');
                p.push_str(c.trim());
            }
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            return Err(format!("line {}: not a `key: value` line: {line}", i + 1));
        };
        if key.starts_with('-') || key.contains(' ') {
            return Err(format!(
                "line {}: block lists and quoted keys are not supported here (use flow style): {line}",
                i + 1
            ));
        }
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        let value = strip_comment(rest.trim());
        let description = pending.take().ok_or_else(|| {
            format!(
                "line {}: `{path}` has no `# -- ` comment above it: say what it does",
                i + 1
            )
        })?;
        let is_map = value.is_empty();
        if is_map {
            stack.push((indent, key.to_owned()));
        }
        out.push(Row {
            key: path,
            kind: if is_map { "object" } else { kind_of(value) },
            default: value.to_owned(),
            description,
        });
    }
    Ok(out)
}

/// A value without a trailing ` # comment` (none of ours has a `#` inside quotes).
fn strip_comment(v: &str) -> &str {
    v.split_once(" #").map_or(v, |(v, _)| v).trim()
}

fn kind_of(v: &str) -> &'static str {
    if v.starts_with('{') {
        "object"
    } else if v.starts_with('[') {
        "list"
    } else if v == "true" || v == "false" {
        "bool"
    } else if v.parse::<i64>().is_ok() {
        "int"
    } else if v.parse::<f64>().is_ok() {
        "float"
    } else {
        "string"
    }
}

/// Every key path serde_yaml sees in values.yaml, maps included.
fn yaml_paths(values: &str) -> Result<BTreeSet<String>, String> {
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut BTreeSet<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, v, out);
                out.insert(path);
            }
        }
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(values).map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    walk("", &doc, &mut out);
    Ok(out)
}

/// The markdown table of values.yaml.
pub fn values_table(values: &str) -> Result<String, String> {
    let rows = rows(values)?;
    // The line reader and a YAML parser must agree on the keys, or the table would miss one.
    let ours: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    let theirs = yaml_paths(values)?;
    let missing: Vec<&String> = theirs
        .iter()
        .filter(|k| {
            !ours.contains(*k)
                // Keys inside a flow map (`{cpu: 10m}`) belong to that map's row.
                && !rows.iter().any(|r| {
                    r.kind == "object"
                        && !r.default.is_empty()
                        && k.starts_with(&format!("{}.", r.key))
                })
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "values.yaml keys the table would miss: {missing:?}"
        ));
    }
    let mut t = String::from("| Key | Type | Default | Description |\n| --- | --- | --- | --- |\n");
    for r in rows {
        let default = if r.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", r.default.replace('|', "\\|"))
        };
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} |",
            r.key,
            r.kind,
            default,
            r.description.replace('|', "\\|")
        );
    }
    Ok(t)
}

/// `readme` with the part between [`BEGIN`] and [`END`] replaced by `table`.
pub fn render_readme(readme: &str, table: &str) -> Result<String, String> {
    let (head, rest) = readme
        .split_once(BEGIN)
        .ok_or_else(|| format!("the chart README has no line {BEGIN}"))?;
    let (_, tail) = rest
        .split_once(END)
        .ok_or_else(|| format!("the chart README has no line {END}"))?;
    Ok(format!("{head}{BEGIN}\n{table}{END}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: &str = "\
# Not documentation.

# -- Images.
images:
  # -- Registry prefix
  # for every image.
  registry: \"\"
  # -- Pull policy.
  pullPolicy: IfNotPresent # trailing
  # -- The proxy image.
  proxy:
    # -- Its repository.
    repository: sidetrace/proxy
# -- Replicas.
replicas: 2
# -- Rate | share.
rate: 1.0
# -- Resources.
resources: {requests: {cpu: 10m}}
# -- Extra names.
extra: []
# -- On.
on: true
";

    #[test]
    fn rows_carry_paths_types_defaults_and_multi_line_descriptions() {
        let rows = rows(VALUES).expect("parses");
        let got: Vec<(&str, &str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.key.as_str(),
                    r.kind,
                    r.default.as_str(),
                    r.description.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("images", "object", "", "Images."),
                (
                    "images.registry",
                    "string",
                    "\"\"",
                    "Registry prefix for every image."
                ),
                (
                    "images.pullPolicy",
                    "string",
                    "IfNotPresent",
                    "Pull policy."
                ),
                ("images.proxy", "object", "", "The proxy image."),
                (
                    "images.proxy.repository",
                    "string",
                    "sidetrace/proxy",
                    "Its repository."
                ),
                ("replicas", "int", "2", "Replicas."),
                ("rate", "float", "1.0", "Rate | share."),
                (
                    "resources",
                    "object",
                    "{requests: {cpu: 10m}}",
                    "Resources."
                ),
                ("extra", "list", "[]", "Extra names."),
                ("on", "bool", "true", "On."),
            ]
        );
    }

    #[test]
    fn an_undocumented_key_is_an_error_naming_it() {
        let err = rows("# -- A.\na:\n  b: 1\n").expect_err("b has no comment");
        assert!(err.contains("`a.b`"), "{err}");
    }

    #[test]
    fn table_escapes_pipes_and_readme_section_is_replaced() {
        let table = values_table(VALUES).expect("table");
        assert!(table.contains("| `rate` | float | `1.0` | Rate \\| share. |"));
        let readme = format!("# Chart\n\n{BEGIN}\nold\n{END}\n\nmore\n");
        let new = render_readme(&readme, &table).expect("markers");
        assert!(new.starts_with("# Chart\n\n"));
        assert!(new.contains(&table) && !new.contains("old") && new.ends_with("\n\nmore\n"));
        assert!(render_readme("no markers", &table).is_err());
    }
}
