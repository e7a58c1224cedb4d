//! `${NAME}` interpolation: every string of the parsed YAML tree gets environment variables and secret files
//! substituted (after parsing, so a secret containing `#`, `:` or quotes can never change the YAML structure).

use super::ConfigError;

/// Replaces `${NAME}` by the environment variable NAME; `$$` is a literal `$`. A missing variable is an error.
pub fn interpolate_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| "unterminated ${...}".to_string())?;
            let name = &body[..end];
            // `${file:/run/secrets/pg-password}`: the file's content without its trailing newline (Docker and
            // Kubernetes secrets are files).
            if let Some(path) = name.strip_prefix("file:") {
                let value = std::fs::read_to_string(path)
                    .map_err(|e| format!("secret file {path} in ${{file:...}} cannot be read: {e}"))?;
                out.push_str(value.trim_end_matches(['\n', '\r']));
                rest = &body[end + 1..];
                continue;
            }
            // `${NAME:-default}`: the default when NAME is unset or empty, as in the shell.
            let (name, default) = match name.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (name, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?} in ${{...}}"));
            }
            let value = match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (export {name}=... or remove ${{{name}}})"
                    ))
                }
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn interpolate_tree(
    value: &mut serde_json::Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        serde_json::Value::String(s) if s.contains('$') => {
            *s = interpolate_env(s, lookup).map_err(|m| ConfigError::invalid(path.join("."), m))?;
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate_tree(item, path, lookup)?;
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.clone());
                interpolate_tree(v, path, lookup)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}
