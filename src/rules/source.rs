//! Reading one rules or config file: YAML 1.2 (JSON is a subset) into a
//! JSON value, with the line of every node kept for error messages, and
//! `${NAME}` replaced from the environment in every string.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

use super::error::{Problem, Problems};

/// A parsed file: its value and where each of its nodes starts.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    pub value: Value,
    /// Problems found while reading (unset environment variables); the
    /// value is still usable, so the rest of the file gets checked too.
    pub problems: Vec<Problem>,
    lines: HashMap<String, usize>,
}

impl Document {
    /// Parses `text`, read from `path`. A syntax error is fatal; unset
    /// environment variables are kept in [`Document::problems`].
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Problems> {
        let docs = MarkedYaml::load_from_str(text)
            .map_err(|e| Problems::one(syntax_error(path, text, &e)))?;
        let mut builder = Builder {
            path,
            lines: HashMap::new(),
            problems: duplicate_keys(path, text),
            env,
        };
        let value = match docs.first() {
            Some(root) => builder.node(root, String::new()),
            None => Value::Null,
        };
        if docs.len() > 1 {
            builder.problems.push(Problem::new(
                path,
                1,
                "a file holds one YAML document".into(),
            ));
        }
        // A node at the very end (an empty value, `key:` on the last line)
        // starts past the last line: it is shown on the last line that
        // holds something, as syntax errors are.
        let last = last_line(text);
        for line in builder.lines.values_mut() {
            *line = (*line).clamp(1, last);
        }
        for p in &mut builder.problems {
            p.line = p.line.clamp(1, last);
        }
        // A key written twice both as `1` and `"1"` is found by both checks.
        builder.problems.sort_by_key(|p| p.line);
        builder.problems.dedup();
        Ok(Self {
            path: path.to_path_buf(),
            value,
            problems: builder.problems,
            lines: builder.lines,
        })
    }

    /// The line where the node at `pointer` (a JSON pointer such as
    /// `/routes/2/when`) starts, or of its nearest ancestor that exists.
    pub fn line(&self, pointer: &str) -> usize {
        let mut p = pointer;
        loop {
            if let Some(line) = self.lines.get(p) {
                return *line;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return 1,
            }
        }
    }

    /// A problem located at `pointer` in this file.
    pub fn problem(&self, pointer: &str, reason: impl Into<String>) -> Problem {
        Problem::new(&self.path, self.line(pointer), reason.into())
    }
}

/// A YAML syntax error at its line. An error found at the end of the file
/// (an unclosed `[`, `{` or quote) is put on the file's last line that
/// holds something, rather than on a line past the end.
fn syntax_error(path: &Path, text: &str, e: &saphyr::ScanError) -> Problem {
    let last = last_line(text);
    let line = e.marker().line();
    if line > last {
        Problem::new(path, last, format!("{} (at the end of the file)", e.info()))
    } else {
        Problem::new(path, line.max(1), e.info().to_string())
    }
}

/// The number of the file's last line that holds something (at least 1).
/// Lines end at LF, CRLF or a lone CR, as YAML has them.
fn last_line(text: &str) -> usize {
    text.split('\n')
        .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(1)
}

/// Keys written twice in one mapping, and aliases. The YAML loader keeps
/// only the last value of such a key and copies anchored values into
/// aliases, both silently, so they are found on the parser's events.
fn duplicate_keys(path: &Path, text: &str) -> Vec<Problem> {
    use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};
    use std::collections::HashSet;

    enum Frame {
        Mapping {
            keys: HashSet<String>,
            want_key: bool,
        },
        Sequence,
    }
    struct Finder<'p> {
        path: &'p Path,
        stack: Vec<Frame>,
        problems: Vec<Problem>,
    }
    impl Finder<'_> {
        /// A node ended: a key (when its mapping waits for one) or a value.
        fn node(&mut self, key: Option<&str>, line: usize) {
            let Some(Frame::Mapping { keys, want_key }) = self.stack.last_mut() else {
                return;
            };
            if *want_key {
                if let Some(k) = key {
                    if !keys.insert(k.to_string()) {
                        self.problems.push(Problem::new(
                            self.path,
                            line,
                            format!("duplicate key `{k}` (a later value would silently replace the earlier)"),
                        ));
                    }
                }
            }
            *want_key = !*want_key;
        }
    }
    impl<'input> SpannedEventReceiver<'input> for Finder<'_> {
        fn on_event(&mut self, ev: Event<'input>, span: Span) {
            match ev {
                Event::MappingStart(..) => self.stack.push(Frame::Mapping {
                    keys: HashSet::new(),
                    want_key: true,
                }),
                Event::SequenceStart(..) => self.stack.push(Frame::Sequence),
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                    self.node(None, span.start.line());
                }
                Event::Scalar(value, ..) => self.node(Some(&value), span.start.line()),
                Event::Alias(_) => {
                    // The loader would copy the anchored value in silently.
                    self.problems.push(Problem::new(
                        self.path,
                        span.start.line(),
                        "YAML aliases (`*name`) are not supported: write the value out".into(),
                    ));
                    self.node(None, span.start.line());
                }
                _ => {}
            }
        }
    }
    let mut finder = Finder {
        path,
        stack: Vec::new(),
        problems: Vec::new(),
    };
    // Syntax errors are the loader's to report.
    let _ = Parser::new_from_str(text).load(&mut finder, true);
    finder.problems
}

struct Builder<'a> {
    path: &'a Path,
    lines: HashMap<String, usize>,
    problems: Vec<Problem>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Builder<'_> {
    fn node(&mut self, node: &MarkedYaml<'_>, pointer: String) -> Value {
        let line = node.span.start.line();
        self.lines.entry(pointer.clone()).or_insert(line);
        match &node.data {
            YamlData::Value(scalar) => self.scalar(scalar, line),
            YamlData::Representation(raw, _, _) => self.string(raw, line),
            YamlData::Sequence(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, format!("{pointer}/{i}")))
                    .collect(),
            ),
            YamlData::Mapping(map) => {
                let mut out = Map::new();
                for (k, v) in map.iter() {
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                        YamlData::Representation(raw, _, _) => raw.to_string(),
                        _ => {
                            self.problems.push(Problem::new(
                                self.path,
                                k.span.start.line(),
                                "mapping keys must be strings".into(),
                            ));
                            continue;
                        }
                    };
                    let child = format!("{pointer}/{}", escape_pointer(&key));
                    self.lines.insert(child.clone(), k.span.start.line());
                    if out.contains_key(&key) {
                        self.problems.push(Problem::new(
                            self.path,
                            k.span.start.line(),
                            format!("duplicate key `{key}` (a later value would silently replace the earlier)"),
                        ));
                    }
                    let value = self.node(v, child);
                    out.insert(key, value);
                }
                Value::Object(out)
            }
            YamlData::Tagged(_, inner) => self.node(inner, pointer),
            YamlData::Alias(_) | YamlData::BadValue => {
                self.problems.push(Problem::new(
                    self.path,
                    line,
                    "unsupported YAML node (aliases are not supported)".into(),
                ));
                Value::Null
            }
        }
    }

    fn scalar(&mut self, scalar: &Scalar<'_>, line: usize) -> Value {
        match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::Number((*i).into()),
            Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Scalar::String(s) => self.string(s, line),
        }
    }

    fn string(&mut self, s: &str, line: usize) -> Value {
        match substitute_env(s, self.env) {
            Ok(s) => Value::String(s),
            Err(name) => {
                self.problems.push(Problem::new(
                    self.path,
                    line,
                    format!("environment variable `{name}` is not set"),
                ));
                Value::String(s.to_string())
            }
        }
    }
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Replaces every `${NAME}` in `s`; `$${` stands for a literal `${`.
/// Returns the name of the first unset variable as the error.
pub fn substitute_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &after[..end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "example.org".to_string())
    }

    #[test]
    fn substitutes_and_escapes() {
        assert_eq!(
            substitute_env("https://${HOST}/x", &env).unwrap(),
            "https://example.org/x"
        );
        assert_eq!(substitute_env("$${HOST}", &env).unwrap(), "${HOST}");
        assert_eq!(substitute_env("${NOPE}", &env).unwrap_err(), "NOPE");
    }

    #[test]
    fn keeps_lines_of_nodes() {
        let text = "routes:\n  - name: a\n    when: {\"==\": [1, 1]}\n  - name: b\n";
        let doc = Document::parse(Path::new("r.yaml"), text, &env).unwrap();
        assert_eq!(doc.line("/routes/0/when"), 3);
        assert_eq!(doc.line("/routes/1/name"), 4);
        assert_eq!(doc.line("/routes/1/missing"), 4);
        assert_eq!(doc.value["routes"][0]["when"]["=="][1], 1);
    }

    #[test]
    fn a_node_at_the_end_is_on_the_last_line() {
        // An anchored empty value ends the file (found by fuzzing): its
        // node starts past the last line.
        for text in ["&e#", "routes:\n  - name: a\n    when:", "a: 1\r\rb:"] {
            let doc = Document::parse(Path::new("r.yaml"), text, &env).unwrap();
            let last = last_line(text);
            assert!(
                doc.lines.values().all(|&l| (1..=last).contains(&l)),
                "{text:?}"
            );
        }
        assert_eq!(last_line("a\rb\r\nc\n\n"), 3);
        assert_eq!(last_line(""), 1);
    }

    #[test]
    fn reports_unset_variable_with_line() {
        let doc = Document::parse(Path::new("r.yaml"), "a: 1\nb: ${NOPE}\n", &env).unwrap();
        assert_eq!(
            Problems(doc.problems.clone()).to_string(),
            "r.yaml:2: environment variable `NOPE` is not set"
        );
        assert_eq!(doc.value["a"], 1);
    }

    #[test]
    fn finds_keys_written_twice() {
        let text = "a:\n  b: 1\n  c: {d: 1, d: 2}\n  b: 2\nlist:\n  - b: 1\n  - b: 2\n";
        let doc = Document::parse(Path::new("r.yaml"), text, &env).unwrap();
        let lines: Vec<_> = doc.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4], "{:?}", doc.problems);
        assert!(doc.problems[0].reason.starts_with("duplicate key `d`"));
    }

    #[test]
    fn refuses_aliases() {
        let text = "a: &x {b: 1}\nc: *x\n";
        let doc = Document::parse(Path::new("r.yaml"), text, &env).unwrap();
        assert_eq!(doc.problems.len(), 1, "{:?}", doc.problems);
        assert_eq!(doc.problems[0].line, 2);
        assert!(doc.problems[0].reason.starts_with("YAML aliases"));
    }

    #[test]
    fn an_error_at_the_end_of_the_file_is_on_its_last_line() {
        let err = Document::parse(Path::new("r.yaml"), "a:\n  b: [1, 2\n\n", &env).unwrap_err();
        assert_eq!(err.0[0].line, 2, "{err}");
        assert!(
            err.0[0].reason.ends_with("(at the end of the file)"),
            "{err}"
        );
    }

    #[test]
    fn reads_json() {
        let doc = Document::parse(
            Path::new("r.json"),
            "{\n \"webhooks\": [\n  {\"key\": \"a\"}\n ]\n}",
            &env,
        )
        .unwrap();
        assert_eq!(doc.value["webhooks"][0]["key"], "a");
        assert_eq!(doc.line("/webhooks/0"), 3);
    }
}
