//! Which exchanges are lifecycle steps, by evidence: a file part or a CSV
//! body is an upload; a later state-changing request that refers back to
//! an upload (it carries the file's name, or a value the upload's answer
//! handed out) is the confirm step; a request whose JSON answers report a
//! state reaching an end is a poll, and its ends are the import's success
//! and failure; a request whose answer hands out an id that later requests
//! carry creates a session. Anything else that changes state is named
//! after its path.

use serde_json::{json, Value};

use super::evidence::Seen;
use super::polls;

/// A route the draft proposes.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub event: String,
    pub method: String,
    pub template: String,
    /// Indices into the exchanges, in order.
    pub exchanges: Vec<usize>,
    /// Why, one line each (`draft --why`).
    pub evidence: Vec<String>,
    pub when: Option<Value>,
    pub data: Vec<(String, Value)>,
    /// A poll's own id (in its path or query), for `dedup_key`.
    pub poll_id: Option<Value>,
    /// Filled in by [`super::sessions`].
    pub session: Option<Value>,
    pub session_alias: Vec<Value>,
    pub dedup_key: Option<Value>,
    /// Where it was placed in the session, or why not (`--why`).
    pub session_why: Vec<String>,
}

impl Proposal {
    /// A proposal for `event` on the method and path of `s`, with no
    /// exchange yet.
    pub fn new(event: &str, s: &Seen<'_>) -> Self {
        Self {
            event: event.to_string(),
            method: s.x.method.clone(),
            template: s.template.clone(),
            exchanges: Vec::new(),
            evidence: Vec::new(),
            when: None,
            data: Vec::new(),
            poll_id: None,
            session: None,
            session_alias: Vec::new(),
            dedup_key: None,
            session_why: Vec::new(),
        }
    }

    /// A lifecycle step (an event type of OneSchema's or the import's
    /// end), not a step named after its path.
    pub fn lifecycle(&self) -> bool {
        LIFECYCLE.contains(&self.event.as_str())
    }
}

/// The event types the draft gives by evidence or by a path's strong word.
pub const LIFECYCLE: &[&str] = &[
    "embed_initialized",
    "file_uploaded",
    "header_selected",
    "columns_mapped",
    "import_submitted",
    "import_succeeded",
    "import_failed",
    "embed_closed",
    "embed_resumed",
    "sheet_operation_performed",
];

/// How far after an answer a request carrying what it handed out is
/// looked for: a session's next steps, not the whole of a long recording.
const FOLLOWING: usize = 1000;

/// Statuses by which an importer refuses a file or a submission.
const REFUSED: &[u16] = &[400, 422];

/// Every proposal, in the order of its first exchange.
pub fn classify(seen: &[Seen<'_>]) -> Vec<Proposal> {
    let mut out = Proposals::default();
    let mut used = vec![false; seen.len()];
    uploads_and_confirms(seen, &mut used, &mut out);
    for p in polls::proposals(seen, &used) {
        for &i in &p.exchanges {
            used[i] = true;
        }
        out.0.push(p);
    }
    creations(seen, &mut used, &mut out);
    for (i, s) in seen.iter().enumerate() {
        if used[i] || s.noise || !s.changes_state() || s.x.status >= 400 {
            continue;
        }
        let event = named(&s.x.method, &s.template);
        let line = format!("{}: changes state; named after its path", at(s));
        out.add(&event, s, i, line, None);
    }
    out.0.sort_by_key(|p| p.exchanges.first().copied());
    guard_uploads(&mut out.0, seen);
    out.0
}

/// "#3 POST /upload -> 200"
pub fn at(s: &Seen<'_>) -> String {
    format!("#{} {} {} -> {}", s.entry, s.x.method, s.x.path, s.x.status)
}

#[derive(Default)]
struct Proposals(Vec<Proposal>);

impl Proposals {
    /// Adds exchange `i` to the proposal of the same event, method,
    /// template and guard, or starts one.
    fn add(&mut self, event: &str, s: &Seen<'_>, i: usize, why: String, when: Option<Value>) {
        let same = |p: &&mut Proposal| {
            p.event == event && p.method == s.x.method && p.template == s.template && p.when == when
        };
        match self.0.iter_mut().find(same) {
            Some(p) => {
                p.exchanges.push(i);
                p.evidence.push(why);
            }
            None => {
                let mut p = Proposal::new(event, s);
                p.exchanges.push(i);
                p.evidence.push(why);
                p.when = when;
                self.0.push(p);
            }
        }
    }
}

/// Uploads, and the state-changing requests that refer back to them.
fn uploads_and_confirms(seen: &[Seen<'_>], used: &mut [bool], out: &mut Proposals) {
    let uploads: Vec<usize> = (0..seen.len())
        .filter(|&i| !seen[i].noise && seen[i].changes_state() && seen[i].uploads())
        .collect();
    // Each later request refers back to its latest upload.
    let mut confirms: Vec<(usize, usize, String)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        // A DELETE closes rather than confirms.
        if s.noise || !s.changes_state() || s.x.method == "DELETE" || uploads.contains(&i) {
            continue;
        }
        let back = uploads
            .iter()
            .rev()
            .filter(|&&u| u < i)
            .find_map(|&u| refers_back(&seen[u], s).map(|why| (u, why)));
        match back {
            // Only the file's name, and an answer handing out an id that
            // a later upload carries: a new session about that file (a
            // headless import created for it, then sent the file), not
            // the confirm step.
            Some((_, Link::FileName(_)))
                if hands_out_used(seen, i).is_some_and(|(_, later)| later.uploads()) => {}
            Some((u, link)) => confirms.push((u, i, link.to_string())),
            None => {}
        }
    }
    for &u in &uploads {
        let s = &seen[u];
        let what = if s.x.files.is_empty() {
            "its body is a file (a CSV or spreadsheet)".to_string()
        } else {
            s.x.files
                .iter()
                .map(|f| format!("a file part `{}` ({})", f.field, f.filename))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let event = match s.x.status {
            st if REFUSED.contains(&st) => "import_failed",
            st if st < 400 => "file_uploaded",
            _ => continue,
        };
        used[u] = true;
        out.add(event, s, u, format!("{}: {what}", at(s)), None);
    }
    for &u in &uploads {
        let mine: Vec<&(usize, usize, String)> =
            confirms.iter().filter(|(up, _, _)| *up == u).collect();
        // The submit step is the last one's method and path: a repeated
        // submit is the same step.
        let submit = mine
            .last()
            .map(|(_, i, _)| (&seen[*i].x.method, &seen[*i].template));
        for (_, i, why) in &mine {
            let s = &seen[*i];
            let last = submit == Some((&s.x.method, &s.template));
            let event = match s.x.status {
                st if REFUSED.contains(&st) && last => "import_failed".to_string(),
                st if st >= 400 => continue,
                _ if last => "import_submitted".to_string(),
                _ => named(&s.x.method, &s.template),
            };
            used[*i] = true;
            let role = if last { "the last" } else { "a" };
            let line = format!(
                "{}: {role} state-changing request after the upload #{} that refers back to it: {why}",
                at(s),
                seen[u].entry
            );
            out.add(&event, s, *i, line, None);
        }
    }
    let mut last_steps: Vec<usize> = Vec::new();
    for &u in &uploads {
        let mine: Vec<usize> = confirms
            .iter()
            .filter(|(up, _, _)| *up == u)
            .map(|(_, i, _)| *i)
            .collect();
        match mine.last() {
            Some(&last) => last_steps.extend(
                mine.iter()
                    .copied()
                    .filter(|&i| same_step(&seen[i], &seen[last])),
            ),
            None => last_steps.push(u),
        }
    }
    form_outcomes(seen, &last_steps, out);
    answered_outcomes(seen, &last_steps, out);
}

/// The last step of an import answered in JSON with how it went (a
/// synchronous import: `{"status": "completed"}`, `{"errors": [...]}`):
/// each end seen becomes a route, as a poll's would.
fn answered_outcomes(seen: &[Seen<'_>], last_steps: &[usize], out: &mut Proposals) {
    for step in by_step(seen, last_steps) {
        let answered: Vec<usize> = step
            .into_iter()
            .filter(|&j| !seen[j].response_body.is_null())
            .collect();
        if !answered.is_empty() {
            out.0.extend(super::polls::ends(
                seen,
                &answered,
                "the import's last step",
            ));
        }
    }
}

/// `exchanges` grouped by method and path, in order of first appearance.
fn by_step(seen: &[Seen<'_>], exchanges: &[usize]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in exchanges {
        match groups.iter_mut().find(|g| same_step(&seen[g[0]], &seen[i])) {
            Some(g) if !g.contains(&i) => g.push(i),
            Some(_) => {}
            None => groups.push(vec![i]),
        }
    }
    groups
}

fn same_step(a: &Seen<'_>, b: &Seen<'_>) -> bool {
    a.x.method == b.x.method && a.template == b.template
}

/// The last step of an import posted as a form: where the same step was
/// answered both with a redirect and with a page (no JSON), the redirect
/// is the form accepted (post/redirect/get) and the page is the form
/// shown again, refused. Each becomes the import's end.
fn form_outcomes(seen: &[Seen<'_>], last_steps: &[usize], out: &mut Proposals) {
    for step in by_step(seen, last_steps) {
        let redirected: Vec<usize> = step
            .iter()
            .copied()
            .filter(|&j| (300..400).contains(&seen[j].x.status))
            .collect();
        let shown_again: Vec<usize> = step
            .iter()
            .copied()
            .filter(|&j| seen[j].x.status == 200 && seen[j].response_body.is_null())
            .collect();
        if redirected.is_empty() || shown_again.is_empty() {
            continue;
        }
        for &j in &redirected {
            let why = format!(
                "{}: the import's last step answered with a redirect where it was also answered with its page again: the form was accepted (post/redirect/get)",
                at(&seen[j])
            );
            out.add("import_succeeded", &seen[j], j, why, None);
        }
        for &j in &shown_again {
            let why = format!(
                "{}: the import's last step answered with its page again where it was also answered with a redirect: the form was refused",
                at(&seen[j])
            );
            out.add("import_failed", &seen[j], j, why, None);
        }
    }
}

/// How a later request refers back to an upload.
enum Link {
    /// A field carries the uploaded file's name.
    FileName(String),
    /// It carries a value the upload's answer handed out.
    HandedOut(String),
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::FileName(field) => {
                write!(f, "its field `{field}` carries the uploaded file's name")
            }
            Link::HandedOut(place) => {
                write!(
                    f,
                    "its {place} carries a value the upload's answer handed out"
                )
            }
        }
    }
}

/// How `later` refers back to `upload`: a value the upload's answer
/// handed out, or the uploaded file's name.
fn refers_back(upload: &Seen<'_>, later: &Seen<'_>) -> Option<Link> {
    let handed_out = |credential: bool| {
        later
            .request_values()
            .filter(|c| c.place.credential == credential)
            .find(|c| upload.hands_out(&c.value))
            .map(|c| Link::HandedOut(c.place.describe()))
    };
    // An id first, then the file's name, then a token the upload's page
    // handed out (its form's CSRF field: the form was that page's).
    handed_out(false)
        .or_else(|| file_name(upload, later))
        .or_else(|| handed_out(true))
}

/// The field of `later` that carries the file `upload` sent.
fn file_name(upload: &Seen<'_>, later: &Seen<'_>) -> Option<Link> {
    let names = upload.filenames();
    let carries_name = |v: &Value| match v {
        Value::String(s) => names
            .iter()
            .any(|n| !n.is_empty() && (s == n || s.ends_with(n))),
        _ => false,
    };
    let Value::Object(m) = &later.request_body else {
        return None;
    };
    m.iter()
        .find(|(_, v)| carries_name(v))
        .map(|(field, _)| Link::FileName(field.clone()))
}

/// A value exchange `i`'s answer hands out (not a credential) that a
/// later request carries, and that request (the first one to).
fn hands_out_used<'s, 'a>(
    seen: &'s [Seen<'a>],
    i: usize,
) -> Option<(&'s super::evidence::Carried, &'s Seen<'a>)> {
    seen[i]
        .carried
        .iter()
        .filter(|c| !c.place.source.request_side() && !c.place.credential)
        .find_map(|c| {
            seen[i + 1..]
                .iter()
                .take(FOLLOWING)
                .find(|l| l.request_values().any(|v| v.value == c.value))
                .map(|l| (c, l))
        })
}

/// Requests whose answer hands out an id that a later request carries:
/// the creation of a session.
fn creations(seen: &[Seen<'_>], used: &mut [bool], out: &mut Proposals) {
    for (i, s) in seen.iter().enumerate() {
        if used[i] || s.noise || !s.changes_state() || !(200..400).contains(&s.x.status) {
            continue;
        }
        if let Some((c, l)) = hands_out_used(seen, i) {
            used[i] = true;
            let line = format!(
                "{}: its answer hands out `{}` ({}), which #{} {} {} carries",
                at(s),
                c.value,
                c.place.describe(),
                l.entry,
                l.x.method,
                l.x.path
            );
            out.add("embed_initialized", s, i, line, None);
        }
    }
}

/// Where an upload and another step share a method and a path, the
/// upload's route takes the exchanges with a file and the other's those
/// without.
fn guard_uploads(props: &mut [Proposal], seen: &[Seen<'_>]) {
    let with_file = json!({"!!": [{"var": "request.files"}]});
    let without = json!({"!": [{"var": "request.files"}]});
    let shared: Vec<(String, String)> = props
        .iter()
        .filter(|p| p.exchanges.iter().all(|&i| seen[i].uploads()))
        .filter(|p| {
            props.iter().any(|q| {
                q.method == p.method
                    && q.template == p.template
                    && q.exchanges.iter().all(|&i| !seen[i].uploads())
            })
        })
        .map(|p| (p.method.clone(), p.template.clone()))
        .collect();
    for p in props.iter_mut() {
        if p.when.is_some() || !shared.contains(&(p.method.clone(), p.template.clone())) {
            continue;
        }
        let uploads = p.exchanges.iter().all(|&i| seen[i].uploads());
        p.when = Some(if uploads {
            with_file.clone()
        } else {
            without.clone()
        });
    }
}

/// An event type for a step known only by its method and path: one of
/// OneSchema's where a word of the path says it plainly, else the method
/// and the path's last word.
pub fn named(method: &str, template: &str) -> String {
    let last = last_word(template);
    let ends_with_param = template.trim_end_matches('/').ends_with('}');
    let suggested = match () {
        _ if method == "DELETE" && ends_with_param => Some("embed_closed"),
        _ if last.contains("header") => Some("header_selected"),
        _ if last.contains("mapping") || last == "map" || last.contains("map-columns") => {
            Some("columns_mapped")
        }
        _ if last.contains("resume") => Some("embed_resumed"),
        _ => None,
    };
    suggested
        .map(str::to_string)
        .unwrap_or_else(|| path_named(method, template))
}

/// The last segment of a path template that is not a parameter.
fn last_word(template: &str) -> String {
    template
        .rsplit('/')
        .find(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or("root")
        .to_ascii_lowercase()
}

/// The method and the path's last word: `post_validate`.
pub fn path_named(method: &str, template: &str) -> String {
    let word: String = last_word(template)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{}_{word}", method.to_ascii_lowercase())
}

/// Once sessions are known: a creation is one only if the id it handed
/// out is its session's key, and a DELETE closes the session only if the
/// id it deletes is the session's key; other such steps are named after
/// their path.
pub fn settle(props: &mut [Proposal]) {
    for p in props.iter_mut() {
        let session = p.session.as_ref().and_then(Value::as_str).unwrap_or("");
        let keeps = match p.event.as_str() {
            "embed_initialized" => session.starts_with("$response.body."),
            "embed_closed" if p.method == "DELETE" => p
                .template
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .and_then(|last| last.strip_prefix('{')?.strip_suffix('}'))
                .is_some_and(|param| session == format!("$params.{param}")),
            _ => true,
        };
        if !keeps {
            p.evidence.push(format!(
                "not `{}`: the session's key is not the id it {}",
                p.event,
                if p.event == "embed_initialized" {
                    "handed out"
                } else {
                    "deletes"
                }
            ));
            p.event = path_named(&p.method, &p.template);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_known_only_by_their_path() {
        assert_eq!(named("DELETE", "/x/{id}"), "embed_closed");
        assert_eq!(named("POST", "/x/{id}/set-header"), "header_selected");
        assert_eq!(named("POST", "/x/{id}/validate"), "post_validate");
        assert_eq!(named("POST", "/admin/login/"), "post_login");
    }
}
