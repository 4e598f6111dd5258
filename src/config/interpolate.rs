//! `${VAR}` / `${VAR:-default}` interpolation of string values in the pipeline file.
//!
//! Secrets and per-environment values (URLs, keys) come from the environment, not from the file.
//! The lookup is a closure so that tests never touch the process environment.
//!
//! Grammar, applied to every scalar value (never to keys):
//! - `${NAME}` — the variable's value; an error naming `NAME` when it is not set.
//! - `${NAME:-default}` — the value, or `default` when the variable is unset *or empty*
//!   (the shell's `:-`). The default is taken literally (no nested `${…}`).
//! - `$${` — a literal `${` (the escape); any other `$` is kept as it is.
//!
//! `NAME` is `[A-Za-z_][A-Za-z0-9_]*`.

/// Why a value could not be interpolated; the message is user-facing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InterpolateError {
    /// `${NAME}` without a default, and `NAME` is not set.
    Missing(String),
    /// `${` without a closing `}`.
    Unterminated,
    /// `${…}` whose name is not a valid variable name.
    BadName(String),
}

impl std::fmt::Display for InterpolateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(name) => write!(
                f,
                "environment variable {name} is not set (use ${{{name}:-default}} to give a default)"
            ),
            Self::Unterminated => write!(f, "unterminated ${{ in value (write $${{ for a literal ${{)"),
            Self::BadName(name) => write!(
                f,
                "invalid environment variable name {name:?} in ${{…}} (letters, digits and _, not starting with a digit)"
            ),
        }
    }
}

/// Replaces every `${…}` of `input` using `env`.
pub(crate) fn interpolate(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let close = tail.find('}').ok_or(InterpolateError::Unterminated)?;
            let inner = &tail[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                return Err(InterpolateError::BadName(name.to_owned()));
            }
            match (env(name), default) {
                (Some(value), None) => out.push_str(&value),
                (Some(value), Some(_)) if !value.is_empty() => out.push_str(&value),
                (_, Some(default)) => out.push_str(default),
                (None, None) => return Err(InterpolateError::Missing(name.to_owned())),
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn set_variables_are_substituted_anywhere_in_the_value() {
        assert_eq!(
            interpolate("postgres://u@${HOST}:5432/x", &env).unwrap(),
            "postgres://u@db.internal:5432/x"
        );
    }

    #[test]
    fn a_default_is_used_when_the_variable_is_unset_or_empty() {
        assert_eq!(interpolate("${NOPE:-a:b/c}", &env).unwrap(), "a:b/c");
        assert_eq!(interpolate("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(
            interpolate("${HOST:-fallback}", &env).unwrap(),
            "db.internal"
        );
        assert_eq!(interpolate("${NOPE:-}", &env).unwrap(), "");
    }

    #[test]
    fn a_missing_variable_without_default_is_named_in_the_error() {
        let err = interpolate("x${SOURCE_URL}", &env).unwrap_err();
        assert_eq!(err, InterpolateError::Missing("SOURCE_URL".into()));
        assert!(err.to_string().contains("SOURCE_URL"));
    }

    #[test]
    fn double_dollar_escapes_and_lone_dollars_stay() {
        assert_eq!(
            interpolate("$${HOST} costs $5", &env).unwrap(),
            "${HOST} costs $5"
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        assert_eq!(
            interpolate("${HOST", &env).unwrap_err(),
            InterpolateError::Unterminated
        );
        assert_eq!(
            interpolate("${1X}", &env).unwrap_err(),
            InterpolateError::BadName("1X".into())
        );
    }
}
