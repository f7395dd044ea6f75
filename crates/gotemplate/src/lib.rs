//! `--format` as podman takes it: `json`, or a Go text/template over the command's JSON output.
//!
//! The subset scripts use: field paths (`.State.Status`), `$` variables, `if`/`else`/`end`,
//! `range` (with `$i, $v :=`), `with`, pipes, parenthesised pipelines with fields after them,
//! and the functions `index`, `json`, `printf`, `print`, `len`, `eq`, `ne`, `lt`, `le`, `gt`,
//! `ge`, `not`, `and`, `or`, `join`, `upper`, `lower`. A leading `table` prints a header and
//! aligns the `\t`-separated columns, as podman's does. The one Go template crate for Rust
//! (gtmpl) prints lists and maps in Rust's debug form and errors on `%v` of a map, so podman's
//! output could not be matched with it.

use std::fmt::Write as _;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub template: String,
    pub detail: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template {:?}: {}", self.template, self.detail)
    }
}

impl std::error::Error for TemplateError {}

/// What `--format` asked for.
#[derive(Debug, Clone)]
pub enum Format {
    Json,
    Template(Template),
}

impl Format {
    /// For clap: `json` (any case), or a template that must parse.
    pub fn parse(text: &str) -> Result<Format, TemplateError> {
        if text.eq_ignore_ascii_case("json") {
            return Ok(Format::Json);
        }
        Template::parse(text).map(Format::Template)
    }
}

#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    table: bool,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Pipeline),
    If { condition: Pipeline, then: Vec<Node>, otherwise: Vec<Node> },
    Range { key: Option<String>, value: Option<String>, over: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
    With { subject: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
}

type Pipeline = Vec<Command>;
type Command = Vec<Arg>;

#[derive(Debug, Clone)]
enum Arg {
    /// `.` followed by zero or more field names.
    Dot(Vec<String>),
    /// `$name.Field...`; `$` alone is the root.
    Var(String, Vec<String>),
    Literal(Value),
    Function(String),
    /// `(pipeline).Field...`
    Group(Pipeline, Vec<String>),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let error = |detail: String| TemplateError { template: source.to_string(), detail };
        let (table, body) = match source.trim_start().strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
            _ => (false, source),
        };
        // Shells pass `\t` through single quotes as two characters; podman reads it as a tab.
        let body = body.replace("\\t", "\t");
        let pieces = split_actions(&body).map_err(error)?;
        let mut parser = Parser { pieces, at: 0 };
        let (nodes, end) = parser.block().map_err(error)?;
        if let Some(keyword) = end {
            return Err(error(format!("unexpected {{{{{keyword}}}}}")));
        }
        Ok(Template { source: source.to_string(), table, nodes })
    }

    pub fn is_table(&self) -> bool {
        self.table
    }

    /// Executes the template with `data` as `.`.
    pub fn render(&self, data: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut scope = Scope { root: data, vars: Vec::new() };
        exec(&self.nodes, data, &mut scope, &mut out)
            .map_err(|detail| TemplateError { template: self.source.clone(), detail })?;
        Ok(out)
    }

    /// The header line of a `table` template: each field's name in capitals, or podman's
    /// heading for it from `headings`, with the template's own text between them.
    pub fn header(&self, headings: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Print(pipeline) => {
                    let name = match pipeline.as_slice() {
                        [command] => match command.as_slice() {
                            [Arg::Dot(path)] if !path.is_empty() => path.join("."),
                            _ => String::new(),
                        },
                        _ => String::new(),
                    };
                    let heading = headings.iter().find(|(field, _)| *field == name).map(|(_, h)| h.to_string());
                    out.push_str(&heading.unwrap_or_else(|| upper_words(&name)));
                }
                _ => {}
            }
        }
        out
    }
}

/// `CreatedAt` → `CREATED AT`.
fn upper_words(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_lowercase();
        out.extend(c.to_uppercase());
    }
    out
}

/// Lines whose cells are separated by `\t`, padded as Go's tabwriter does in podman (minimum
/// width 12, padding 2); the last cell of a line is not padded.
pub fn align_columns(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max((cell.chars().count() + 2).max(12));
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(out, "{cell:<width$}", width = widths[i]);
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

enum Piece {
    Text(String),
    Action(String),
}

/// Cuts the source into text and `{{ }}` actions, applying `{{-` and `-}}` trimming.
fn split_actions(source: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let (trim_before, after) = match after.strip_prefix("- ") {
            Some(a) => (true, a),
            None => (false, after),
        };
        if trim_before {
            text = text.trim_end();
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        let close = find_close(after).ok_or_else(|| "an action has no closing }}".to_string())?;
        let mut inner = &after[..close];
        trim_next = false;
        if let Some(i) = inner.strip_suffix(" -") {
            inner = i;
            trim_next = true;
        }
        let inner = inner.trim();
        if !inner.starts_with("/*") {
            pieces.push(Piece::Action(inner.to_string()));
        }
        rest = &after[close + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        pieces.push(Piece::Text(text.to_string()));
    }
    Ok(pieces)
}

/// The `}}` that closes an action, skipping any inside string literals.
fn find_close(action: &str) -> Option<usize> {
    let bytes = action.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (Some(b'"'), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, b'"' | b'`') => quote = Some(bytes[i]),
            (None, b'}') if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

struct Parser {
    pieces: Vec<Piece>,
    at: usize,
}

impl Parser {
    /// Nodes up to an `else` or `end` (returned) or the end of the template (`None`).
    fn block(&mut self) -> Result<(Vec<Node>, Option<String>), String> {
        let mut nodes = Vec::new();
        while self.at < self.pieces.len() {
            let piece = std::mem::replace(&mut self.pieces[self.at], Piece::Text(String::new()));
            self.at += 1;
            let action = match piece {
                Piece::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Piece::Action(action) => action,
            };
            let (keyword, rest) = match action.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => (action.as_str(), ""),
            };
            match keyword {
                "end" => return Ok((nodes, Some("end".into()))),
                "else" => return Ok((nodes, Some(format!("else {rest}").trim_end().to_string()))),
                "if" => nodes.push(self.conditional(rest)?),
                "range" => {
                    let (key, value, over) = declaration(rest)?;
                    let (body, otherwise) = self.body("range")?;
                    nodes.push(Node::Range { key, value, over, body, otherwise });
                }
                "with" => {
                    let subject = pipeline(rest)?;
                    let (body, otherwise) = self.body("with")?;
                    nodes.push(Node::With { subject, body, otherwise });
                }
                "define" | "template" | "block" => return Err(format!("{{{{{keyword}}}}} is not supported")),
                _ => nodes.push(Node::Print(pipeline(&action)?)),
            }
        }
        Ok((nodes, None))
    }

    fn conditional(&mut self, condition: &str) -> Result<Node, String> {
        let condition = pipeline(condition)?;
        let (then, end) = self.block()?;
        let otherwise = match end.as_deref() {
            Some("end") => Vec::new(),
            Some("else") => self.until_end("if")?,
            Some(other) if other.starts_with("else if ") => vec![self.conditional(&other["else if ".len()..])?],
            _ => return Err("{{if}} has no {{end}}".into()),
        };
        Ok(Node::If { condition, then, otherwise })
    }

    fn body(&mut self, what: &str) -> Result<(Vec<Node>, Vec<Node>), String> {
        let (body, end) = self.block()?;
        match end.as_deref() {
            Some("end") => Ok((body, Vec::new())),
            Some("else") => Ok((body, self.until_end(what)?)),
            _ => Err(format!("{{{{{what}}}}} has no {{{{end}}}}")),
        }
    }

    fn until_end(&mut self, what: &str) -> Result<Vec<Node>, String> {
        match self.block()? {
            (nodes, Some(end)) if end == "end" => Ok(nodes),
            _ => Err(format!("the {{{{else}}}} of {{{{{what}}}}} has no {{{{end}}}}")),
        }
    }
}

/// `$i, $v := pipeline`, `$v := pipeline` or a bare pipeline.
fn declaration(text: &str) -> Result<(Option<String>, Option<String>, Pipeline), String> {
    let Some((vars, rest)) = text.split_once(":=") else { return Ok((None, None, pipeline(text)?)) };
    let names: Vec<&str> = vars.split(',').map(str::trim).collect();
    let var = |name: &str| -> Result<String, String> {
        name.strip_prefix('$')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .map(str::to_string)
            .ok_or_else(|| format!("{name:?} is not a variable"))
    };
    match names.as_slice() {
        [value] => Ok((None, Some(var(value)?), pipeline(rest)?)),
        [key, value] => Ok((Some(var(key)?), Some(var(value)?), pipeline(rest)?)),
        _ => Err(format!("cannot declare {vars:?}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Literal(Value),
    Ident(String),
    Open,
    Close(Vec<String>),
    Pipe,
}

fn fields(text: &str) -> Vec<String> {
    text.split('.').filter(|f| !f.is_empty()).map(str::to_string).collect()
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word_end = |mut j: usize| {
        while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.') {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                let end = word_end(i + 1);
                out.push(Token::Close(fields(&chars[i + 1..end].iter().collect::<String>())));
                i = end;
            }
            '|' => {
                out.push(Token::Pipe);
                i += 1;
            }
            '.' => {
                let end = word_end(i + 1);
                out.push(Token::Dot(fields(&chars[i..end].iter().collect::<String>())));
                i = end;
            }
            '$' => {
                let end = word_end(i + 1);
                let word: String = chars[i + 1..end].iter().collect();
                let (name, path) = word.split_once('.').unwrap_or((&word, ""));
                out.push(Token::Var(name.to_string(), fields(path)));
                i = end;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in {text:?}")),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(&other) => s.push(other),
                                None => return Err(format!("unterminated string in {text:?}")),
                            }
                        }
                        Some(&other) => s.push(other),
                    }
                    i += 1;
                }
                out.push(Token::Literal(Value::String(s)));
                i += 1;
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| format!("unterminated string in {text:?}"))?;
                out.push(Token::Literal(Value::String(chars[i + 1..i + 1 + end].iter().collect())));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut end = i + 1;
                while end < chars.len() && (chars[end].is_ascii_digit() || chars[end] == '.') {
                    end += 1;
                }
                let word: String = chars[i..end].iter().collect();
                let number = word
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| word.parse::<f64>().map(Value::from))
                    .map_err(|_| format!("bad number {word:?}"))?;
                out.push(Token::Literal(number));
                i = end;
            }
            c if c.is_alphabetic() || c == '_' => {
                let end = word_end(i);
                let word: String = chars[i..end].iter().collect();
                out.push(match word.as_str() {
                    "true" => Token::Literal(Value::Bool(true)),
                    "false" => Token::Literal(Value::Bool(false)),
                    "nil" => Token::Literal(Value::Null),
                    _ => Token::Ident(word),
                });
                i = end;
            }
            other => return Err(format!("unexpected {other:?} in {text:?}")),
        }
    }
    Ok(out)
}

fn pipeline(text: &str) -> Result<Pipeline, String> {
    let tokens = tokens(text)?;
    let mut at = 0;
    let pipeline = parse_pipeline(&tokens, &mut at)?;
    if at < tokens.len() {
        return Err(format!("unexpected ')' in {text:?}"));
    }
    if pipeline.iter().any(Vec::is_empty) {
        return Err(format!("missing value in {text:?}"));
    }
    Ok(pipeline)
}

fn parse_pipeline(tokens: &[Token], at: &mut usize) -> Result<Pipeline, String> {
    let mut pipeline = vec![Vec::new()];
    while let Some(token) = tokens.get(*at) {
        let arg = match token {
            Token::Close(_) => break,
            Token::Pipe => {
                pipeline.push(Vec::new());
                *at += 1;
                continue;
            }
            Token::Dot(path) => Arg::Dot(path.clone()),
            Token::Var(name, path) => Arg::Var(name.clone(), path.clone()),
            Token::Literal(value) => Arg::Literal(value.clone()),
            Token::Ident(name) => Arg::Function(name.clone()),
            Token::Open => {
                *at += 1;
                let inner = parse_pipeline(tokens, at)?;
                let Some(Token::Close(path)) = tokens.get(*at) else { return Err("a '(' has no ')'".into()) };
                Arg::Group(inner, path.clone())
            }
        };
        pipeline.last_mut().expect("a pipeline has a command").push(arg);
        *at += 1;
    }
    Ok(pipeline)
}

struct Scope<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
}

fn exec(nodes: &[Node], dot: &Value, scope: &mut Scope, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print(pipeline) => print_value(out, &eval_pipeline(pipeline, dot, scope)?),
            Node::If { condition, then, otherwise } => {
                let branch = if truthy(&eval_pipeline(condition, dot, scope)?) { then } else { otherwise };
                exec(branch, dot, scope, out)?;
            }
            Node::With { subject, body, otherwise } => {
                let value = eval_pipeline(subject, dot, scope)?;
                if truthy(&value) { exec(body, &value, scope, out)? } else { exec(otherwise, dot, scope, out)? }
            }
            Node::Range { key, value, over, body, otherwise } => {
                let items: Vec<(Value, Value)> = match eval_pipeline(over, dot, scope)? {
                    Value::Array(list) => list.into_iter().enumerate().map(|(i, v)| (Value::from(i), v)).collect(),
                    Value::Object(map) => map.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
                    Value::Null => Vec::new(),
                    other => return Err(format!("range can't iterate over {}", describe(&other))),
                };
                if items.is_empty() {
                    exec(otherwise, dot, scope, out)?;
                }
                for (k, v) in items {
                    let depth = scope.vars.len();
                    if let Some(name) = key {
                        scope.vars.push((name.clone(), k));
                    }
                    if let Some(name) = value {
                        scope.vars.push((name.clone(), v.clone()));
                    }
                    let result = exec(body, &v, scope, out);
                    scope.vars.truncate(depth);
                    result?;
                }
            }
        }
    }
    Ok(())
}

fn eval_pipeline(pipeline: &Pipeline, dot: &Value, scope: &Scope) -> Result<Value, String> {
    let mut previous: Option<Value> = None;
    for command in pipeline {
        previous = Some(eval_command(command, dot, scope, previous)?);
    }
    Ok(previous.unwrap_or(Value::Null))
}

fn eval_command(command: &Command, dot: &Value, scope: &Scope, piped: Option<Value>) -> Result<Value, String> {
    match command.as_slice() {
        [Arg::Function(name), args @ ..] => {
            let mut values = args.iter().map(|a| eval_arg(a, dot, scope)).collect::<Result<Vec<_>, _>>()?;
            values.extend(piped);
            call(name, &values)
        }
        [single] if piped.is_none() => eval_arg(single, dot, scope),
        [_, ..] => Err("only a function can take arguments or a piped value".into()),
        [] => Err("empty command".into()),
    }
}

fn eval_arg(arg: &Arg, dot: &Value, scope: &Scope) -> Result<Value, String> {
    match arg {
        Arg::Dot(path) => walk(dot, path, "."),
        Arg::Var(name, path) if name.is_empty() => walk(scope.root, path, "$"),
        Arg::Var(name, path) => {
            let (_, value) = scope
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("undefined variable \"${name}\""))?;
            walk(value, path, &format!("${name}"))
        }
        Arg::Literal(value) => Ok(value.clone()),
        Arg::Function(name) => call(name, &[]),
        Arg::Group(pipeline, path) => walk(&eval_pipeline(pipeline, dot, scope)?, path, "(...)"),
    }
}

/// Follows field names; a name the object does not have is an error that names it.
fn walk(start: &Value, path: &[String], origin: &str) -> Result<Value, String> {
    let mut value = start;
    let mut reached = origin.trim_end_matches('.').to_string();
    for field in path {
        value = match value {
            Value::Object(map) => map.get(field).ok_or_else(|| {
                let known: Vec<&str> = map.keys().map(String::as_str).collect();
                format!("no field {field:?} in {}; it has {}", display_path(&reached), known.join(", "))
            })?,
            other => return Err(format!("can't evaluate field {field:?} in {}", describe(other))),
        };
        reached = format!("{reached}.{field}");
    }
    Ok(value.clone())
}

fn display_path(reached: &str) -> &str {
    if reached.is_empty() { "." } else { reached }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Go's `%v`: lists as `[a b]`, objects as `map[k:v]`, null as `<no value>`.
fn print_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("<no value>"),
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Array(list) => {
            out.push('[');
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("map[");
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = write!(out, "{k}:");
                print_value(out, v);
            }
            out.push(']');
        }
    }
}

fn to_text(value: &Value) -> String {
    let mut out = String::new();
    print_value(&mut out, value);
    out
}

fn compare(name: &str, a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().partial_cmp(&y.as_f64()).ok_or_else(|| format!("{name}: cannot compare numbers"))
        }
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) if matches!(name, "eq" | "ne") => Ok(x.cmp(y)),
        (Value::Null, Value::Null) if matches!(name, "eq" | "ne") => Ok(std::cmp::Ordering::Equal),
        _ => Err(format!("{name}: cannot compare {} with {}", describe(a), describe(b))),
    }
}

fn call(name: &str, args: &[Value]) -> Result<Value, String> {
    let arity = |n: usize| -> Result<(), String> {
        if args.len() == n { Ok(()) } else { Err(format!("{name} takes {n} arguments, not {}", args.len())) }
    };
    match name {
        "json" => {
            arity(1)?;
            Ok(Value::String(serde_json::to_string(&args[0]).map_err(|e| e.to_string())?))
        }
        "index" => {
            let Some((first, keys)) = args.split_first() else { return Err("index needs a value".into()) };
            let mut value = first.clone();
            for key in keys {
                value = match (&value, key) {
                    (Value::Array(list), Value::Number(n)) => {
                        let i = n.as_u64().ok_or_else(|| format!("index {n} is not a position"))?;
                        list.get(i as usize).cloned().ok_or_else(|| format!("index {i} out of range"))?
                    }
                    // A key a map lacks reads as empty, as a Go map's zero value does.
                    (Value::Object(map), Value::String(k)) => {
                        map.get(k).cloned().unwrap_or(Value::String(String::new()))
                    }
                    (v, k) => return Err(format!("can't index {} with {}", describe(v), describe(k))),
                };
            }
            Ok(value)
        }
        "len" => {
            arity(1)?;
            match &args[0] {
                Value::Array(a) => Ok(Value::from(a.len())),
                Value::Object(o) => Ok(Value::from(o.len())),
                Value::String(s) => Ok(Value::from(s.len())),
                other => Err(format!("len of {}", describe(other))),
            }
        }
        "not" => {
            arity(1)?;
            Ok(Value::Bool(!truthy(&args[0])))
        }
        "and" => Ok(args.iter().find(|v| !truthy(v)).or(args.last()).cloned().unwrap_or(Value::Null)),
        "or" => Ok(args.iter().find(|v| truthy(v)).or(args.last()).cloned().unwrap_or(Value::Null)),
        "eq" => {
            let Some((first, rest)) = args.split_first() else { return Err("eq needs two values".into()) };
            if rest.is_empty() {
                return Err("eq needs two values".into());
            }
            for other in rest {
                if compare(name, first, other)? == std::cmp::Ordering::Equal {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            arity(2)?;
            let order = compare(name, &args[0], &args[1])?;
            use std::cmp::Ordering::*;
            Ok(Value::Bool(match name {
                "ne" => order != Equal,
                "lt" => order == Less,
                "le" => order != Greater,
                "gt" => order == Greater,
                _ => order != Less,
            }))
        }
        "print" => Ok(Value::String(args.iter().map(to_text).collect::<Vec<_>>().join(" "))),
        "println" => Ok(Value::String(args.iter().map(to_text).collect::<Vec<_>>().join(" ") + "\n")),
        "printf" => {
            let Some((Value::String(format), rest)) = args.split_first() else {
                return Err("printf needs a format string first".into());
            };
            printf(format, rest).map(Value::String)
        }
        "upper" | "lower" => {
            arity(1)?;
            let text = to_text(&args[0]);
            Ok(Value::String(if name == "upper" { text.to_uppercase() } else { text.to_lowercase() }))
        }
        "join" => {
            arity(2)?;
            // `join .Names ","` and, through a pipe, `.Names | join ","`.
            let (list, separator) = match (&args[0], &args[1]) {
                (Value::Array(list), Value::String(sep)) | (Value::String(sep), Value::Array(list)) => (list, sep),
                _ => return Err("join takes a list and a separator".into()),
            };
            Ok(Value::String(list.iter().map(to_text).collect::<Vec<_>>().join(separator)))
        }
        _ => Err(format!("function {name:?} not defined")),
    }
}

/// Go's `printf` verbs `%v %s %d %q %t %x %f` with flags `-` and `0`, width and precision.
fn printf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' | ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            precision = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else { return Err("printf: the format ends in %".into()) };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let text = match (verb, arg) {
            ('d', Value::Number(n)) => n.as_i64().map(|i| i.to_string()).unwrap_or_else(|| n.to_string()),
            ('x', Value::Number(n)) => n.as_i64().map(|i| format!("{i:x}")).unwrap_or_else(|| n.to_string()),
            ('x', Value::String(s)) => hex::encode(s),
            ('f', Value::Number(n)) => format!("{:.*}", precision.unwrap_or(6), n.as_f64().unwrap_or(0.0)),
            ('q', v) => format!("{:?}", to_text(v)),
            ('s' | 'v' | 't', v) => {
                let text = to_text(v);
                match precision {
                    Some(p) if verb == 's' => text.chars().take(p).collect(),
                    _ => text,
                }
            }
            (verb, v) => format!("%!{verb}({})", to_text(v)),
        };
        let width: usize = width.parse().unwrap_or(0);
        let padding = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', padding));
        } else {
            out.extend(std::iter::repeat_n(if zero { '0' } else { ' ' }, padding));
            out.push_str(&text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, data: &Value) -> Result<String, String> {
        Template::parse(template).and_then(|t| t.render(data)).map_err(|e| e.to_string())
    }

    fn inspect() -> Value {
        json!({
            "Id": "abc123", "Name": "web",
            "State": {"Status": "exited", "Running": false, "Paused": false, "Checkpointed": true, "Pid": 0},
            "Config": {"Labels": {"app": "web", "tier": "front"}, "Cmd": ["sh", "-c", "top"]},
            "Mounts": [{"Destination": "/data", "Name": "data"}],
            "NetworkSettings": {"Networks": {"ckpt": {"IPAddress": "10.0.0.2"}}}
        })
    }

    #[test]
    fn field_paths_and_podmans_state_line() {
        let t = "{{.State.Status}}:{{.State.Running}}:{{.State.Paused}}:{{.State.Checkpointed}}";
        assert_eq!(render(t, &inspect()).unwrap(), "exited:false:false:true");
        assert_eq!(render("{{.Name}} {{.State.Pid}}", &inspect()).unwrap(), "web 0");
        assert_eq!(render("{{ .Name -}}  \n  {{- .Id }}", &inspect()).unwrap(), "webabc123");
    }

    #[test]
    fn index_range_if_with_and_printf() {
        let data = inspect();
        assert_eq!(render(r#"{{index .Config.Labels "app"}}"#, &data).unwrap(), "web");
        assert_eq!(render(r#"{{index .Config.Labels "none"}}"#, &data).unwrap(), "");
        assert_eq!(render("{{index .Config.Cmd 2}}", &data).unwrap(), "top");
        assert_eq!(render(r#"{{(index .NetworkSettings.Networks "ckpt").IPAddress}}"#, &data).unwrap(), "10.0.0.2");
        assert_eq!(render("{{range .Config.Cmd}}<{{.}}>{{end}}", &data).unwrap(), "<sh><-c><top>");
        assert_eq!(
            render("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", &data).unwrap(),
            "app=web;tier=front;"
        );
        assert_eq!(
            render("{{range $i, $m := .Mounts}}{{$i}}:{{$m.Destination}} {{$.Name}}{{end}}", &data).unwrap(),
            "0:/data web"
        );
        assert_eq!(render("{{range .Nothing}}x{{else}}none{{end}}", &json!({"Nothing": []})).unwrap(), "none");
        let t = "{{if .State.Running}}up{{else if .State.Checkpointed}}checkpointed{{else}}down{{end}}";
        assert_eq!(render(t, &data).unwrap(), "checkpointed");
        assert_eq!(render(r#"{{if eq .State.Status "exited" "stopped"}}yes{{end}}"#, &data).unwrap(), "yes");
        assert_eq!(render("{{if and .State.Checkpointed (not .State.Running)}}ok{{end}}", &data).unwrap(), "ok");
        assert_eq!(render("{{with .State}}{{.Status}}{{end}}", &data).unwrap(), "exited");
        assert_eq!(
            render(r#"{{printf "%-8s|%5d|%q|%v" .Name .State.Pid .Id .Config.Cmd}}"#, &data).unwrap(),
            r#"web     |    0|"abc123"|[sh -c top]"#
        );
        assert_eq!(render("{{len .Config.Cmd}} {{.Config.Labels}}", &data).unwrap(), "3 map[app:web tier:front]");
        assert_eq!(
            render(r#"{{join .Config.Cmd " "}} {{.Config.Cmd | join ","}} {{upper .Name}}"#, &data).unwrap(),
            "sh -c top sh,-c,top WEB"
        );
    }

    #[test]
    fn json_of_anything() {
        let data = inspect();
        assert_eq!(render("{{json .Config.Cmd}}", &data).unwrap(), r#"["sh","-c","top"]"#);
        let whole: Value = serde_json::from_str(&render("{{json .}}", &data).unwrap()).unwrap();
        assert_eq!(whole, data);
    }

    #[test]
    fn errors_name_the_bad_field_or_function() {
        let err = render("{{.State.Bogus}}", &inspect()).unwrap_err();
        assert!(err.contains(r#"no field "Bogus" in .State"#) && err.contains("Checkpointed"), "{err}");
        let err = render("{{.Nope}}", &inspect()).unwrap_err();
        assert!(err.contains(r#"no field "Nope" in ."#), "{err}");
        assert!(
            render("{{.Name.First}}", &inspect()).unwrap_err().contains(r#"can't evaluate field "First" in a string"#)
        );
        assert!(
            render("{{frobnicate .Name}}", &inspect()).unwrap_err().contains(r#"function "frobnicate" not defined"#)
        );
        for bad in ["{{.State.Status", "{{if .X}}open", "{{end}}", r#"{{printf "%s}}"#, "{{(index .X}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_get_a_header_and_aligned_columns() {
        let t = Template::parse(r"table {{.ID}}\t{{.Names}}	{{.CreatedAt}}").unwrap();
        assert!(t.is_table());
        let header = t.header(&[("ID", "CONTAINER ID")]);
        assert_eq!(header, "CONTAINER ID\tNAMES\tCREATED AT");
        let rows = [header, t.render(&json!({"ID": "abc", "Names": "web", "CreatedAt": "now"})).unwrap()];
        assert_eq!(align_columns(&rows), "CONTAINER ID  NAMES       CREATED AT\nabc           web         now\n");
        assert!(matches!(Format::parse("JSON").unwrap(), Format::Json));
        assert!(!Template::parse("tablet").unwrap().is_table());
    }
}
