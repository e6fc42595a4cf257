//! The OpenDSS command language, the subset the IEEE test feeders use
//! (`../shared/data/feeders/README.md`): `Clear`, `Set`, `New`/`Edit` with `~` continuation
//! lines, `Redirect`/`Compile`, `Solve`, `CalcVoltageBases`, bus coordinates (ignored),
//! `!` and `//` line comments, `/* … */` block comments, quoted and bracketed values, and the
//! in-line RPN math of parenthesised scalars such as `(8 1000 /)`.
//!
//! This module only turns text into [`Command`]s that remember where each parameter was
//! written; what the parameters mean is [`super::feeder`]'s business.

use std::path::{Path, PathBuf};

use super::GridError;

/// Where a command or parameter was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) file: PathBuf,
    /// 1-based line number.
    pub(crate) line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, line {}", self.file.display(), self.line)
    }
}

/// One `key=value` (or positional `value`) parameter of a command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Param {
    /// Lowercase key; `None` for a positional value.
    pub(crate) key: Option<String>,
    /// The value with its quotes or brackets removed.
    pub(crate) value: String,
    pub(crate) location: Location,
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verb {
    Clear,
    /// `Set option=value …`.
    Set,
    /// `New class.name …`.
    New {
        class: String,
        name: String,
    },
    /// `Edit class.name …`.
    Edit {
        class: String,
        name: String,
    },
    /// `Solve` (OpenDSS solves with its controls on; the reader records where it was).
    Solve,
    /// `CalcVoltageBases` / `calcv`.
    CalcVoltageBases,
}

/// A command with its parameters (continuation lines folded in).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Command {
    pub(crate) verb: Verb,
    pub(crate) params: Vec<Param>,
    pub(crate) location: Location,
}

/// How deep `Redirect` may nest before the reader assumes a loop.
const MAX_REDIRECT_DEPTH: usize = 16;

/// Reads a feeder script and every file it redirects to (paths relative to the file that
/// names them), in order.
pub(crate) fn read_script(path: &Path) -> Result<Vec<Command>, GridError> {
    let mut commands = Vec::new();
    read_into(path, 0, &mut commands)?;
    Ok(commands)
}

fn read_into(path: &Path, depth: usize, out: &mut Vec<Command>) -> Result<(), GridError> {
    if depth > MAX_REDIRECT_DEPTH {
        return Err(GridError::parse(
            path,
            0,
            "Redirect",
            format!("more than {MAX_REDIRECT_DEPTH} nested Redirect commands (a loop?)"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|source| GridError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut in_block_comment = false;
    for (i, raw) in text.lines().enumerate() {
        let location = Location {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let Some(line) = outside_block_comment(raw.trim(), &mut in_block_comment) else {
            continue;
        };
        let tokens = tokenize(line, &location)?;
        let Some((first, rest)) = tokens.split_first() else {
            continue;
        };
        if let Some(key) = &first.key {
            out.push(property_edit(key, first, rest, location)?);
            continue;
        }
        command(first, rest, location, depth, out)?;
    }
    Ok(())
}

/// The part of a line outside `/* … */` (`None`: all of it is inside).
fn outside_block_comment<'a>(mut line: &'a str, in_block: &mut bool) -> Option<&'a str> {
    if *in_block {
        let end = line.find("*/")?;
        *in_block = false;
        line = line[end + 2..].trim();
    }
    if line.starts_with("/*") {
        match line.find("*/") {
            Some(end) if end >= 2 => line = line[end + 2..].trim(),
            _ => {
                *in_block = true;
                return None;
            }
        }
    }
    Some(line)
}

/// `Class.name.property=value …`: an edit of one object.
fn property_edit(
    key: &str,
    first: &Param,
    rest: &[Param],
    location: Location,
) -> Result<Command, GridError> {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(class), Some(name), Some(property))
            if !class.is_empty() && !name.is_empty() && !property.is_empty() =>
        {
            let mut params = vec![Param {
                key: Some(property.to_string()),
                value: first.value.clone(),
                location: location.clone(),
            }];
            params.extend(rest.iter().cloned());
            Ok(Command {
                verb: Verb::Edit {
                    class: class.to_string(),
                    name: name.to_string(),
                },
                params,
                location,
            })
        }
        _ => Err(GridError::parse(
            &location.file,
            location.line,
            &first.value,
            "a command must start with a verb (New, Edit, ~, Set, Redirect, Solve, …) or be \
             Class.name.property=value",
        )),
    }
}

/// One command line: appended to `out` (continuations to the command before; `Redirect`
/// reads its file in place).
fn command(
    first: &Param,
    rest: &[Param],
    location: Location,
    depth: usize,
    out: &mut Vec<Command>,
) -> Result<(), GridError> {
    let path = location.file.clone();
    let simple = |verb: Verb, params: Vec<Param>, location: Location| Command {
        verb,
        params,
        location,
    };
    match first.value.to_ascii_lowercase().as_str() {
        "~" | "more" | "m" => match out.last_mut() {
            Some(Command {
                verb: Verb::New { .. } | Verb::Edit { .. },
                params,
                ..
            }) => params.extend(rest.iter().cloned()),
            _ => {
                return Err(GridError::parse(
                    &path,
                    location.line,
                    "~",
                    "a continuation line must follow a New or Edit command",
                ))
            }
        },
        verb @ ("new" | "edit") => {
            let (class, name, params) = object_and_params(rest, &location)?;
            let verb = if verb == "new" {
                Verb::New { class, name }
            } else {
                Verb::Edit { class, name }
            };
            out.push(simple(verb, params, location));
        }
        "redirect" | "compile" => {
            let Some(target) = rest.first() else {
                return Err(GridError::parse(
                    &path,
                    location.line,
                    &first.value,
                    "names no file",
                ));
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            read_into(&dir.join(&target.value), depth + 1, out)?;
        }
        "clear" => out.push(simple(Verb::Clear, Vec::new(), location)),
        "set" => out.push(simple(Verb::Set, rest.to_vec(), location)),
        "solve" => out.push(simple(Verb::Solve, rest.to_vec(), location)),
        "calcv" | "calcvoltagebases" => {
            out.push(simple(Verb::CalcVoltageBases, Vec::new(), location))
        }
        // Plotting coordinates and reports do not change the circuit.
        "setbusxy" | "buscoords" | "show" | "plot" | "export" => {}
        other => {
            return Err(GridError::parse(
                &path,
                location.line,
                other,
                "unsupported command (supported: Clear, Set, New, Edit, ~, Redirect, \
                 Compile, Solve, CalcVoltageBases, SetBusXY, BusCoords)",
            ))
        }
    }
    Ok(())
}

/// `class.name` from the first parameter of `New`/`Edit` (positional or `object=`).
fn object_and_params(
    params: &[Param],
    location: &Location,
) -> Result<(String, String, Vec<Param>), GridError> {
    let Some((first, rest)) = params.split_first() else {
        return Err(GridError::parse(
            &location.file,
            location.line,
            "New",
            "names no object (expected class.name)",
        ));
    };
    if !matches!(first.key.as_deref(), None | Some("object")) {
        return Err(GridError::parse(
            &location.file,
            location.line,
            &first.value,
            "expected the object as class.name before its properties",
        ));
    }
    let object = first.value.to_ascii_lowercase();
    match object.split_once('.') {
        Some((class, name)) if !class.is_empty() && !name.is_empty() => {
            Ok((class.to_string(), name.to_string(), rest.to_vec()))
        }
        _ => Err(GridError::parse(
            &location.file,
            location.line,
            &first.value,
            "expected an object named class.name (e.g. Line.L1)",
        )),
    }
}

/// Splits one line into parameters, stopping at `!` or `//` outside quotes.
pub(crate) fn tokenize(line: &str, location: &Location) -> Result<Vec<Param>, GridError> {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i >= chars.len() || is_comment(&chars, i) {
            break;
        }
        let (first, next) = read_value(&chars, i, location)?;
        i = next;
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        if j < chars.len() && chars[j] == '=' && !first.quoted {
            j += 1;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j >= chars.len() || is_comment(&chars, j) {
                return Err(GridError::parse(
                    &location.file,
                    location.line,
                    &first.text,
                    "has `=` but no value",
                ));
            }
            let (value, next) = read_value(&chars, j, location)?;
            i = next;
            out.push(Param {
                key: Some(first.text.to_ascii_lowercase()),
                value: value.text,
                location: location.clone(),
            });
        } else {
            out.push(Param {
                key: None,
                value: first.text,
                location: location.clone(),
            });
        }
    }
    Ok(out)
}

fn is_comment(chars: &[char], i: usize) -> bool {
    chars[i] == '!' || (chars[i] == '/' && chars.get(i + 1) == Some(&'/'))
}

struct Value {
    text: String,
    quoted: bool,
}

/// A bare word (up to whitespace, `=` or a comment) or a quoted/bracketed value.
fn read_value(
    chars: &[char],
    start: usize,
    location: &Location,
) -> Result<(Value, usize), GridError> {
    let close = match chars[start] {
        '"' => Some('"'),
        '\'' => Some('\''),
        '(' => Some(')'),
        '[' => Some(']'),
        '{' => Some('}'),
        _ => None,
    };
    if let Some(close) = close {
        let mut j = start + 1;
        while j < chars.len() && chars[j] != close {
            j += 1;
        }
        if j >= chars.len() {
            let text: String = chars[start..].iter().collect();
            return Err(GridError::parse(
                &location.file,
                location.line,
                &text,
                format!("`{}` is never closed by `{close}`", chars[start]),
            ));
        }
        let text: String = chars[start + 1..j].iter().collect();
        return Ok((
            Value {
                text: text.trim().to_string(),
                quoted: true,
            },
            j + 1,
        ));
    }
    let mut j = start;
    while j < chars.len()
        && !chars[j].is_whitespace()
        && chars[j] != '='
        && chars[j] != ','
        && !is_comment(chars, j)
    {
        j += 1;
    }
    if j == start {
        // A lone `=`.
        return Err(GridError::parse(
            &location.file,
            location.line,
            "=",
            "`=` without a property name before it",
        ));
    }
    Ok((
        Value {
            text: chars[start..j].iter().collect(),
            quoted: false,
        },
        j,
    ))
}

/// A number, or an RPN expression of numbers and operators (`8 1000 /`, `2 sqrt`).
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(x) = text.parse::<f64>() {
        return Some(x);
    }
    let mut stack: Vec<f64> = Vec::new();
    for word in text.split_whitespace() {
        if let Ok(x) = word.parse::<f64>() {
            stack.push(x);
            continue;
        }
        let unary = |f: fn(f64) -> f64, stack: &mut Vec<f64>| -> Option<()> {
            let a = stack.pop()?;
            stack.push(f(a));
            Some(())
        };
        let binary = |f: fn(f64, f64) -> f64, stack: &mut Vec<f64>| -> Option<()> {
            let b = stack.pop()?;
            let a = stack.pop()?;
            stack.push(f(a, b));
            Some(())
        };
        match word.to_ascii_lowercase().as_str() {
            "+" => binary(|a, b| a + b, &mut stack)?,
            "-" => binary(|a, b| a - b, &mut stack)?,
            "*" => binary(|a, b| a * b, &mut stack)?,
            "/" => binary(|a, b| a / b, &mut stack)?,
            "^" => binary(f64::powf, &mut stack)?,
            "sqrt" => unary(f64::sqrt, &mut stack)?,
            "sqr" => unary(|a| a * a, &mut stack)?,
            "inv" => unary(|a| 1.0 / a, &mut stack)?,
            "pi" => stack.push(std::f64::consts::PI),
            _ => return None,
        }
    }
    match stack.as_slice() {
        [x] if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// The numbers of an array value: `1 2 3`, `1, 2, 3`, and matrix rows separated by `|`.
pub(crate) fn parse_numbers(text: &str) -> Option<Vec<f64>> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '|')
        .filter(|w| !w.is_empty())
        .map(parse_number)
        .collect()
}

/// The words of an array value (`[650.1 RG60.1]`, `'wye wye'`, `(a, b)`).
pub(crate) fn parse_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Location {
        Location {
            file: PathBuf::from("t.dss"),
            line: 7,
        }
    }

    #[test]
    fn tokens_keys_values_and_comments() {
        let p = tokenize(
            "New Transformer.Sub Phases=3 XHL=(8 1000 /) kVs=[2.4  2.4] conns='wye wye' ! c",
            &loc(),
        )
        .unwrap();
        let kv: Vec<(Option<&str>, &str)> = p
            .iter()
            .map(|p| (p.key.as_deref(), p.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                (None, "New"),
                (None, "Transformer.Sub"),
                (Some("phases"), "3"),
                (Some("xhl"), "8 1000 /"),
                (Some("kvs"), "2.4  2.4"),
                (Some("conns"), "wye wye"),
            ]
        );
        let p = tokenize("~ rmatrix = (0.3 | 0.1 0.3) // note", &loc()).unwrap();
        assert_eq!(p[1].key.as_deref(), Some("rmatrix"));
        assert_eq!(parse_numbers(&p[1].value).unwrap(), vec![0.3, 0.1, 0.3]);
    }

    #[test]
    fn rpn_math() {
        assert_eq!(parse_number("8 1000 /"), Some(0.008));
        assert_eq!(parse_number(".5 1000 /"), Some(0.0005));
        assert_eq!(parse_number("2 3 ^"), Some(8.0));
        assert_eq!(parse_number("1 +"), None);
        assert_eq!(parse_number("1 2"), None);
        assert_eq!(parse_number("abc"), None);
    }

    #[test]
    fn unclosed_bracket_names_line_and_token() {
        let e = tokenize("New Line.L1 rmatrix=(1 2", &loc()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.dss, line 7") && s.contains("(1 2"), "{s}");
    }
}
