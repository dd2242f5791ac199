//! Reading multipart uploads as they stream by, keeping only each part's
//! headers. File contents are never buffered: outside a part's header
//! block, only enough bytes to spot a delimiter split across chunks are
//! kept. Header blocks are parsed by `httparse`, `Content-Disposition`
//! by `parse-net`
//! (`mailparse` for a header that is not RFC syntax).

use memchr::memmem;

use crate::derive::FilePart;

/// A part's header block larger than this stops the scan.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Parts recorded at most.
const MAX_FILES: usize = 100;
/// Characters kept of a part's field name, filename or content type.
const MAX_FIELD_CHARS: usize = 1024;
/// Bytes of transport padding allowed after a delimiter.
const MAX_PADDING: usize = 256;
/// The most bytes a scanner keeps between chunks: a part's header block,
/// or a delimiter (boundary of at most 200 bytes) with its padding.
pub const MAX_BUFFERED: usize = MAX_HEADER_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the next delimiter (preamble or inside a part body).
    Seeking,
    /// Inside a part's header block.
    Headers,
    Done,
    /// The stream was malformed; what was found so far stands.
    Failed,
}

/// Incremental scanner over one multipart body.
pub struct MultipartScanner {
    delimiter: Vec<u8>,
    pending: Vec<u8>,
    state: State,
    files: Vec<FilePart>,
}

impl MultipartScanner {
    /// A scanner for `content_type`, or `None` if it is not
    /// `multipart/*` with a boundary.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let mime: mime::Mime = content_type.parse().ok()?;
        if mime.type_() != mime::MULTIPART {
            return None;
        }
        let boundary = mime.get_param(mime::BOUNDARY)?.as_str();
        if boundary.is_empty() || boundary.len() > 200 {
            return None;
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        // The body may start with the first delimiter, without a CRLF.
        Some(Self {
            delimiter,
            pending: b"\r\n".to_vec(),
            state: State::Seeking,
            files: Vec::new(),
        })
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if matches!(self.state, State::Done | State::Failed) {
            return;
        }
        self.pending.extend_from_slice(chunk);
        while self.step() {}
    }

    /// The parts with a filename found so far, in order.
    pub fn into_files(self) -> Vec<FilePart> {
        self.files
    }

    /// The parts with a filename found so far, in order.
    pub fn files(&self) -> &[FilePart] {
        &self.files
    }

    /// Bytes held between two chunks: at most [`MAX_BUFFERED`], however
    /// the body is written or cut.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// One step of the state machine; false when it needs more input.
    fn step(&mut self) -> bool {
        match self.state {
            State::Seeking => self.seek(),
            State::Headers => self.headers(),
            State::Done | State::Failed => false,
        }
    }

    fn seek(&mut self) -> bool {
        let Some(pos) = memmem::find(&self.pending, &self.delimiter) else {
            // Keep only what could be the start of a split delimiter.
            let keep = self.delimiter.len();
            if self.pending.len() > keep {
                self.pending.drain(..self.pending.len() - keep);
            }
            return false;
        };
        let after = pos + self.delimiter.len();
        let rest = &self.pending[after..];
        if rest.len() < 2 {
            self.pending.drain(..pos);
            return false;
        }
        if rest.starts_with(b"--") {
            self.state = State::Done;
            self.pending.clear();
            return false;
        }
        // A delimiter line is the boundary, transport padding (spaces and
        // tabs) and CRLF (RFC 2046 5.1.1): `--ab` is content when the
        // boundary is `a`.
        let pad = rest
            .iter()
            .take(MAX_PADDING + 1)
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if pad > MAX_PADDING {
            return self.fail();
        }
        match &rest[pad..] {
            [b'\r', b'\n', ..] => {
                self.pending.drain(..after + pad + 2);
                self.state = State::Headers;
                true
            }
            // The line may still end well: wait for more.
            [] | [b'\r'] => {
                self.pending.drain(..pos);
                false
            }
            // Not a delimiter: look on, past its CRLF.
            _ => {
                self.pending.drain(..pos + 2);
                true
            }
        }
    }

    fn headers(&mut self) -> bool {
        if self.pending.starts_with(b"\r\n") {
            self.pending.drain(..2);
            self.state = State::Seeking;
            return true;
        }
        let Some(end) = memmem::find(&self.pending, b"\r\n\r\n") else {
            return if self.pending.len() > MAX_HEADER_BYTES {
                self.fail()
            } else {
                false
            };
        };
        let block_end = end + 4;
        if block_end > MAX_HEADER_BYTES {
            return self.fail();
        }
        let block: Vec<u8> = self.pending.drain(..block_end).collect();
        self.state = State::Seeking;
        if let Some(file) = parse_part_headers(&block) {
            if self.files.len() < MAX_FILES {
                self.files.push(file);
            }
        }
        true
    }

    fn fail(&mut self) -> bool {
        self.state = State::Failed;
        self.pending = Vec::new();
        false
    }
}

fn parse_part_headers(block: &[u8]) -> Option<FilePart> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let httparse::Status::Complete((_, parsed)) =
        httparse::parse_headers(block, &mut headers).ok()?
    else {
        return None;
    };
    let value = |name: &str| {
        parsed
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let raw = parsed
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))?
        .value;
    let (field, filename) = disposition(raw)?;
    let clip = |s: String| s.chars().take(MAX_FIELD_CHARS).collect::<String>();
    Some(FilePart {
        field: clip(field),
        filename: clip(filename),
        content_type: value("content-type").map(clip),
    })
}

/// A part's field name and file name from its `Content-Disposition`
/// (RFC 7578, RFC 6266): quoted strings may hold `;` and escaped quotes,
/// and `filename*` (RFC 5987, `UTF-8''...`) wins over `filename`. A
/// header that is not RFC syntax is read leniently (`mailparse`) rather
/// than losing the file. `None` when the part carries no file name.
pub fn disposition(raw: &[u8]) -> Option<(String, String)> {
    let Ok(cd) = parse_net::parse_content_disposition(raw) else {
        let lenient = mailparse::parse_content_disposition(&String::from_utf8_lossy(raw));
        let filename = lenient.params.get("filename")?.clone();
        return Some((
            lenient.params.get("name").cloned().unwrap_or_default(),
            filename,
        ));
    };
    let filename = cd.filename().and_then(|f| {
        let mut buf = vec![0u8; f.max_decoded_len()];
        f.decode_into(&mut buf).ok().map(str::to_string)
    })?;
    let field = cd.name().map(|w| word(&w)).unwrap_or_default();
    Some((field, filename))
}

/// A token or a quoted string, unescaped.
fn word(w: &parse_net::text::Word<'_>) -> String {
    if let Some(s) = w.as_str() {
        return s.to_string();
    }
    let mut buf = vec![0u8; w.len()];
    w.unescape_into(&mut buf)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_read_as_the_rfcs_say() {
        let cases: &[(&[u8], &str, &str)] = &[
            // A quoted `;` is part of the name (issue 24: it was cut).
            (
                br#"form-data; name="file"; filename="Q1 report; final.csv""#,
                "file",
                "Q1 report; final.csv",
            ),
            (
                br#"form-data; name="up\"load"; filename="a \"quoted\" name.csv""#,
                "up\"load",
                "a \"quoted\" name.csv",
            ),
            // `filename*` wins over `filename`, and is UTF-8 percent-decoded.
            (
                b"form-data; name=file; filename=\"rates.csv\"; filename*=UTF-8''%E2%82%AC%20rates.csv",
                "file",
                "\u{20ac} rates.csv",
            ),
            (b"form-data; name=file; filename=plain.csv", "file", "plain.csv"),
            // Not RFC syntax (an unquoted space): still seen.
            (b"form-data; name=file; filename=my file.csv", "file", "my file.csv"),
        ];
        for (raw, field, filename) in cases {
            assert_eq!(
                disposition(raw),
                Some((field.to_string(), filename.to_string())),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(disposition(br#"form-data; name="note""#), None);
    }

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\nContent-Type: text/csv\r\n\r\na,b\r\n1,2\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"more\"; filename=\"b.xlsx\"\r\n\r\n\r\n--XyZ--\r\n";

    fn expected() -> Vec<FilePart> {
        vec![
            FilePart {
                field: "file".into(),
                filename: "contacts.csv".into(),
                content_type: Some("text/csv".into()),
            },
            FilePart {
                field: "more".into(),
                filename: "b.xlsx".into(),
                content_type: None,
            },
        ]
    }

    #[test]
    fn finds_file_parts() {
        let mut s =
            MultipartScanner::for_content_type("multipart/form-data; boundary=XyZ").unwrap();
        s.feed(BODY);
        assert_eq!(s.into_files(), expected());
    }

    #[test]
    fn any_chunking_gives_the_same_parts() {
        for size in 1..BODY.len() {
            let mut s = MultipartScanner::for_content_type("multipart/form-data; boundary=\"XyZ\"")
                .unwrap();
            for chunk in BODY.chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(s.into_files(), expected(), "chunk size {size}");
        }
    }

    #[test]
    fn keeps_memory_bounded_inside_a_large_part() {
        let mut s =
            MultipartScanner::for_content_type("multipart/form-data; boundary=XyZ").unwrap();
        s.feed(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\r\n",
        );
        for _ in 0..1000 {
            s.feed(&[b'x'; 4096]);
            assert!(s.pending.len() <= 4096 + 16);
        }
        assert_eq!(s.into_files().len(), 1);
    }

    #[test]
    fn padding_up_to_the_limit_is_read_however_it_is_cut() {
        // A delimiter, 256 bytes of padding, then the part's headers.
        let mut body = b"--XyZ".to_vec();
        body.extend_from_slice(&[b' '; MAX_PADDING]);
        body.extend_from_slice(
            b"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.csv\"\r\n\r\nx\r\n--XyZ--\r\n",
        );
        for cut in [1, 5 + MAX_PADDING - 1, 5 + MAX_PADDING, 5 + MAX_PADDING + 1] {
            let mut s =
                MultipartScanner::for_content_type("multipart/form-data; boundary=XyZ").unwrap();
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(s.into_files().len(), 1, "cut at {cut}");
        }
    }

    #[test]
    fn only_a_delimiter_line_is_a_delimiter() {
        // `--XyZa` and `--XyZ x` are content when the boundary is `XyZ`.
        let body = b"--XyZa\r\nContent-Disposition: form-data; name=\"x\"; filename=\"no.csv\"\r\n\r\n\r\n--XyZ x\r\nContent-Disposition: form-data; name=\"y\"; filename=\"no2.csv\"\r\n\r\n\r\n--XyZ \t\r\nContent-Disposition: form-data; name=\"file\"; filename=\"yes.csv\"\r\n\r\nx\r\n--XyZ--\r\n";
        for size in 1..body.len() {
            let mut s =
                MultipartScanner::for_content_type("multipart/form-data; boundary=XyZ").unwrap();
            for chunk in body.chunks(size) {
                s.feed(chunk);
            }
            let files = s.into_files();
            assert_eq!(files.len(), 1, "chunk size {size}: {files:?}");
            assert_eq!(files[0].filename, "yes.csv");
        }
    }

    #[test]
    fn malformed_input_is_harmless() {
        assert!(MultipartScanner::for_content_type("application/json").is_none());
        assert!(MultipartScanner::for_content_type("multipart/form-data").is_none());
        let mut s =
            MultipartScanner::for_content_type("multipart/form-data; boundary=XyZ").unwrap();
        s.feed(b"--XyZ\r\n");
        s.feed(&vec![b'h'; MAX_HEADER_BYTES + 10]);
        assert!(s.into_files().is_empty());
    }
}
