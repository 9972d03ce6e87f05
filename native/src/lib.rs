//! invoice-sm's per-record step for the common valid event, in one call:
//! decode a structured-mode CloudEvent, decide it against the invoice's
//! state, and encode the outcome and the new state.
//!
//! It decides only what it can vouch for, and never refuses. It accepts only
//! a narrow, plain form of input (ASCII, no escapes, no nulls, each field once, only the fields it
//! knows) and answers `None` for anything else; the Python path
//! (`adapters.wire.decode_record` -> `domain.decide.decide` ->
//! `adapters.wire.outcome_bytes` / `encode_state`) then decides that record
//! and alone explains refusals. Where it answers, its bytes are the Python
//! path's bytes: `tests/fuzz/test_native_step.py` holds the two to the same
//! result on generated valid and hostile inputs.
//!
//! It knows no lifecycle of its own: the statuses, the legal moves, the
//! terminal statuses, the event types and the decision names are handed in
//! by `adapters.native` from `domain`, which stays their one definition. The
//! order of the checks in `decide` is `domain.decide.decide`'s.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// Decision kinds, in the order `adapters.native` hands them in.
const ACCEPTED: usize = 0;
const UNCHANGED: usize = 1;
const DUPLICATE: usize = 2;
const REJECTED: usize = 3;

/// Reject reasons, in the order `adapters.native` hands them in.
const ILLEGAL_TRANSITION: usize = 0;
const TERMINAL_STATE: usize = 1;
const APPID_MISMATCH: usize = 2;

struct EventType {
    name: String,
    /// The status the type asks for; `None`: the event names it (`data.reimburse_status`).
    target: Option<usize>,
    /// A WeChat report (a fact about the card) rather than an upstream request.
    wechat: bool,
}

#[pyclass(frozen, module = "invoice_sm_native")]
struct Step {
    statuses: Vec<String>,
    /// `terminal[status]`: no upstream request moves an invoice out of it.
    terminal: Vec<bool>,
    /// `moves[from][to]`: the trigger of a legal move.
    moves: Vec<Vec<Option<String>>>,
    event_types: Vec<EventType>,
    recent_ids: usize,
    outcome_source: String,
    /// The Python objects returned as the decision kind (`DecisionKind` members).
    kinds: Vec<Py<PyAny>>,
    /// The outcome CloudEvent type of each kind.
    outcome_types: Vec<String>,
    reasons: Vec<String>,
    max_event_id: usize,
}

// ------------------------------------------------------------------ parsing

/// A JSON reader for the plain form only: every `None` means "not plain",
/// never "invalid" (the Python path judges).
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, i: 0 }
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string of printable ASCII without escapes (so no `"` or `\` inside).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let c = *self.b.get(self.i)?;
            match c {
                b'"' => break,
                0x20..=0x7e if c != b'\\' => self.i += 1,
                _ => return None,
            }
        }
        let s = &self.b[start..self.i];
        self.i += 1;
        // ASCII checked byte by byte above.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    }

    /// A non-negative integer without leading zeros that fits in an i64.
    fn uint(&mut self) -> Option<i64> {
        self.ws();
        let start = self.i;
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None; // a float: msgspec's int field refuses it
        }
        Some(digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    }

    /// `{ "name": value, ... }`: calls `field` with each name; it reads the value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let name = self.string()?;
            self.eat(b':')?;
            field(self, name)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }
}

/// Sets `slot` once: a second occurrence of a name is not plain.
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

#[derive(Default)]
struct Event<'a> {
    specversion: Option<&'a str>,
    id: Option<&'a str>,
    source: Option<&'a str>,
    type_: Option<&'a str>,
    time: Option<&'a str>,
    subject: Option<&'a str>,
    datacontenttype: Option<&'a str>,
    partitionkey: Option<&'a str>,
    data: Option<()>,
    card_id: Option<&'a str>,
    code: Option<&'a str>,
    appid: Option<&'a str>,
    status: Option<&'a str>,
}

fn parse_event(value: &[u8]) -> Option<Event<'_>> {
    let mut e = Event::default();
    let mut r = Reader::new(value);
    r.object(|r, name| match name {
        "specversion" => once(&mut e.specversion, r.string()),
        "id" => once(&mut e.id, r.string()),
        "source" => once(&mut e.source, r.string()),
        "type" => once(&mut e.type_, r.string()),
        "time" => once(&mut e.time, r.string()),
        "subject" => once(&mut e.subject, r.string()),
        "datacontenttype" => once(&mut e.datacontenttype, r.string()),
        "partitionkey" => once(&mut e.partitionkey, r.string()),
        "data" => {
            once(&mut e.data, Some(()))?;
            let (mut card_id, mut code, mut appid, mut status) = (None, None, None, None);
            r.object(|r, name| match name {
                "card_id" => once(&mut card_id, r.string()),
                "code" => once(&mut code, r.string()),
                "appid" => once(&mut appid, r.string()),
                "reimburse_status" => once(&mut status, r.string()),
                _ => None,
            })?;
            (e.card_id, e.code, e.appid, e.status) = (card_id, code, appid, status);
            Some(())
        }
        _ => None,
    })?;
    r.end()?;
    Some(e)
}

/// An invoice's state as `adapters.wire.decode_state` reads it (less
/// `updated_at`, which deciding replaces and never reads).
struct State<'a> {
    card_id: &'a str,
    code: &'a str,
    status: usize,
    version: i64,
    appid: &'a str,
    recent_event_ids: Vec<&'a str>,
}

fn parse_state<'a>(value: &'a [u8], statuses: &[String]) -> Option<State<'a>> {
    let (mut card_id, mut code, mut status, mut version, mut appid) = (None, None, None, None, None);
    let (mut updated_at, mut ids, mut schema) = (None::<Option<&str>>, None, None);
    let mut r = Reader::new(value);
    r.object(|r, name| match name {
        "card_id" => once(&mut card_id, r.string()),
        "code" => once(&mut code, r.string()),
        "status" => once(
            &mut status,
            r.string().and_then(|s| statuses.iter().position(|x| x == s)),
        ),
        "version" => once(&mut version, r.uint()),
        "appid" => once(&mut appid, r.string()),
        "schema_version" => once(&mut schema, r.uint()),
        "updated_at" => {
            if r.peek()? == b'n' {
                if r.b[r.i..].starts_with(b"null") {
                    r.i += 4;
                    return once(&mut updated_at, Some(None));
                }
                return None;
            }
            once(&mut updated_at, r.string().map(Some))
        }
        "recent_event_ids" => {
            let mut list = Vec::new();
            r.eat(b'[')?;
            if r.peek()? == b']' {
                r.i += 1;
            } else {
                loop {
                    list.push(r.string()?);
                    match r.peek()? {
                        b',' => r.i += 1,
                        b']' => {
                            r.i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            once(&mut ids, Some(list))
        }
        _ => None,
    })?;
    r.end()?;
    Some(State {
        card_id: card_id?,
        code: code?,
        status: status.unwrap_or(0),
        version: version.unwrap_or(0),
        appid: appid.unwrap_or(""),
        recent_event_ids: ids.unwrap_or_default(),
    })
}

// --------------------------------------------------------------- validation

/// `TOKEN_PATTERN`: `[A-Za-z0-9_-]{1,64}`.
fn token(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// `RFC3339_PATTERN`: `[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})`.
fn rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if !(1..=9).contains(&(i - start)) {
            return false;
        }
    }
    match &b[i..] {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// The headers as the Kafka binding reads them, when they say structured
/// mode plainly: no `ce_specversion` (binary mode), and a content type that
/// is absent, null, `application/cloudevents+json...`, or another JSON one.
fn plain_structured(headers: &Bound<'_, PyAny>) -> PyResult<bool> {
    if headers.is_none() {
        return Ok(true);
    }
    let mut content_type: Option<Vec<u8>> = None;
    for item in headers.try_iter()? {
        let item = item?;
        let Ok(pair) = item.downcast::<PyTuple>() else {
            return Ok(false);
        };
        if pair.len() != 2 {
            return Ok(false);
        }
        let name = pair.get_item(0)?;
        let Ok(name) = name.downcast::<PyString>() else {
            return Ok(false);
        };
        // Not UTF-8 (aiokafka's surrogateescape): the Python path refuses it.
        let Ok(name) = name.to_str() else { return Ok(false) };
        // A non-ASCII name may lower-case into an ASCII one (Kelvin sign): leave it to Python.
        if !name.is_ascii() {
            return Ok(false);
        }
        if name.eq_ignore_ascii_case("ce_specversion") {
            return Ok(false);
        }
        if name.eq_ignore_ascii_case("content-type") {
            // The last one counts, as in `wire._header_map`.
            let value = pair.get_item(1)?;
            content_type = if value.is_none() {
                None
            } else {
                let Ok(bytes) = value.downcast::<PyBytes>() else {
                    return Ok(false);
                };
                Some(bytes.as_bytes().to_ascii_lowercase())
            };
        }
    }
    Ok(match content_type {
        None => true,
        Some(ct) if ct.starts_with(b"application/cloudevents") => ct.starts_with(b"application/cloudevents+json"),
        Some(ct) => ct.windows(4).any(|w| w == b"json"),
    })
}

// ----------------------------------------------------------------- encoding

/// A JSON string as msgspec writes it.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// The inside of a JSON string as msgspec writes it: `"`, `\\` and C0 controls escaped, the rest as is.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // The usual case, and every string the readers above let through: nothing to escape.
    if bytes.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.extend_from_slice(bytes);
        return;
    }
    for &c in bytes {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            _ => out.push(c),
        }
    }
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_int(out: &mut Vec<u8>, n: i64) {
    use std::io::Write;
    let _ = write!(out, "{n}"); // a Vec takes every write
}

/// A compact JSON object written field by field, in the order of the calls
/// (msgspec writes a struct's fields in their declared order).
struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> ObjectWriter<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        push_str(self.out, name);
        self.out.push(b':');
    }

    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        push_str(self.out, value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        self.name(name);
        push_opt_str(self.out, value);
    }

    fn int(&mut self, name: &str, value: i64) {
        self.name(name);
        push_int(self.out, value);
    }

    /// A value already in JSON (`true`, `null`, a literal).
    fn raw(&mut self, name: &str, json: &[u8]) {
        self.name(name);
        self.out.extend_from_slice(json);
    }

    fn strs<'s>(&mut self, name: &str, values: impl Iterator<Item = &'s str>) {
        self.name(name);
        self.out.push(b'[');
        for (n, value) in values.enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            push_str(self.out, value);
        }
        self.out.push(b']');
    }

    /// A nested object as the value of `name`; close it before writing on here.
    fn object(&mut self, name: &str) -> ObjectWriter<'_> {
        self.name(name);
        ObjectWriter::open(self.out)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

// ------------------------------------------------------------------- the step

#[pymethods]
impl Step {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        statuses: Vec<String>,
        terminal: Vec<String>,
        moves: Vec<(String, String, String)>,
        event_types: Vec<(String, Option<String>, bool)>,
        recent_ids: usize,
        outcome_source: String,
        kinds: Vec<(Py<PyAny>, String)>,
        reasons: Vec<String>,
        max_event_id: usize,
    ) -> PyResult<Self> {
        use pyo3::exceptions::PyValueError;
        // The statuses are data (index 0 is the state of an invoice never seen);
        // the kinds and reasons are the ones `Step::step` writes.
        if statuses.is_empty() || kinds.len() != 4 || reasons.len() != 3 {
            return Err(PyValueError::new_err("expected some statuses, 4 kinds, 3 reasons"));
        }
        let index = |s: &str| {
            statuses
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| PyValueError::new_err(format!("unknown status {s}")))
        };
        let mut term = vec![false; statuses.len()];
        for s in &terminal {
            term[index(s)?] = true;
        }
        let mut table = vec![vec![None; statuses.len()]; statuses.len()];
        for (from, to, trigger) in moves {
            table[index(&from)?][index(&to)?] = Some(trigger);
        }
        let mut types = Vec::new();
        for (name, target, wechat) in event_types {
            let target = target.as_deref().map(index).transpose()?;
            types.push(EventType { name, target, wechat });
        }
        let (kinds, outcome_types) = kinds.into_iter().unzip();
        Ok(Step {
            statuses,
            terminal: term,
            moves: table,
            event_types: types,
            recent_ids,
            outcome_source,
            kinds,
            outcome_types,
            reasons,
            max_event_id,
        })
    }

    /// One record: `None` (the Python path decides it), or `(kind, legal,
    /// outcome, state)`: the `DecisionKind`; for a WeChat report that is not
    /// a duplicate whether its move was legal, else `None`; the outcome
    /// value; the new state's changelog value (`None` for a duplicate).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, value, headers, state, now, topic, partition, offset, max_bytes))]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        state: Option<&Bound<'py, PyBytes>>,
        now: Option<&str>,
        topic: &str,
        partition: i64,
        offset: i64,
        max_bytes: usize,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let (Ok(key), Ok(value)) = (key.downcast::<PyBytes>(), value.downcast::<PyBytes>()) else {
            return Ok(None);
        };
        let (key, value) = (key.as_bytes(), value.as_bytes());
        if value.is_empty() || value.len() > max_bytes || !plain_structured(headers)? {
            return Ok(None);
        }
        let Some(out) = self.step(key, value, state.map(|s| s.as_bytes()), now, topic, partition, offset) else {
            return Ok(None);
        };
        let legal = match out.legal {
            None => py.None(),
            Some(legal) => legal.into_pyobject(py)?.to_owned().into_any().unbind(),
        };
        let state = match &out.state {
            None => py.None(),
            Some(s) => PyBytes::new(py, s).into_any().unbind(),
        };
        let outcome = PyBytes::new(py, &out.outcome).into_any().unbind();
        Ok(Some(PyTuple::new(
            py,
            [self.kinds[out.kind].clone_ref(py), legal, outcome, state],
        )?))
    }
}

struct Decided {
    kind: usize,
    legal: Option<bool>,
    outcome: Vec<u8>,
    state: Option<Vec<u8>>,
}

impl Step {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        key: &[u8],
        value: &[u8],
        state: Option<&[u8]>,
        now: Option<&str>,
        topic: &str,
        partition: i64,
        offset: i64,
    ) -> Option<Decided> {
        // Decode: `CloudEvent`'s schema, then `wire._to_domain`'s checks.
        let e = parse_event(value)?;
        if e.specversion? != "1.0" {
            return None;
        }
        let (event_id, source, type_) = (e.id?, e.source?, e.type_?);
        if !(1..=self.max_event_id).contains(&event_id.len())
            || !(1..=1024).contains(&source.len())
            || type_.len() > 256
        {
            return None;
        }
        e.data?;
        let (card_id, code) = (e.card_id?, e.code?);
        if !token(card_id) || !token(code) || !e.appid.is_none_or(token) || !e.time.is_none_or(rfc3339) {
            return None;
        }
        let event_type = self.event_types.iter().find(|t| t.name == type_)?;
        if let Some(ct) = e.datacontenttype {
            if ct.len() > 256 || !ct.to_ascii_lowercase().contains("json") {
                return None;
            }
        }
        let named = match e.status {
            None => None,
            Some(s) => Some(self.statuses.iter().position(|x| x == s)?),
        };
        let requested = match (event_type.target, named) {
            (None, None) => return None,
            (None, Some(n)) => n,
            (Some(t), Some(n)) if n != t => return None,
            (Some(t), _) => t,
        };
        let expected = format!("{card_id}/{code}");
        if key != expected.as_bytes()
            || e.partitionkey.is_some_and(|p| p.len() > 256 || p != expected)
            || e.subject.is_some_and(|s| s.len() > 256 || s != expected)
        {
            return None;
        }
        let appid = e.appid.unwrap_or("");

        // The state so far (`None`: never seen, judged from INIT).
        let stored = match state {
            Some(raw) => Some(parse_state(raw, &self.statuses)?),
            None => None,
        };
        let st = stored.unwrap_or(State {
            card_id,
            code,
            status: 0,
            version: 0,
            appid: "",
            recent_event_ids: Vec::new(),
        });

        // Decide: `domain.decide.decide`, in its order.
        let current = st.status;
        let wechat = event_type.wechat;
        let mut legal_report = true;
        let (kind, reason, trigger, new_status, new_version);
        if st.recent_event_ids.contains(&event_id) {
            (kind, reason, trigger) = (DUPLICATE, None, None);
            (new_status, new_version) = (current, st.version);
        } else if !st.appid.is_empty() && !appid.is_empty() && appid != st.appid {
            (kind, reason, trigger) = (REJECTED, Some(APPID_MISMATCH), None);
            (new_status, new_version) = (current, st.version);
        } else if requested == current {
            (kind, reason, trigger) = (UNCHANGED, None, None);
            (new_status, new_version) = (current, st.version);
        } else if wechat {
            let t = if self.terminal[current] {
                None
            } else {
                self.moves[current][requested].as_deref()
            };
            legal_report = t.is_some();
            (kind, reason, trigger) = (ACCEPTED, None, t);
            (new_status, new_version) = (requested, st.version + 1);
        } else if self.terminal[current] {
            (kind, reason, trigger) = (REJECTED, Some(TERMINAL_STATE), None);
            (new_status, new_version) = (current, st.version);
        } else {
            match self.moves[current][requested].as_deref() {
                None => {
                    (kind, reason, trigger) = (REJECTED, Some(ILLEGAL_TRANSITION), None);
                    (new_status, new_version) = (current, st.version);
                }
                Some(t) => {
                    (kind, reason, trigger) = (ACCEPTED, None, Some(t));
                    (new_status, new_version) = (requested, st.version + 1);
                }
            }
        }
        let new_appid = if st.appid.is_empty() { appid } else { st.appid };

        // The new state's changelog value (`wire.encode_state`, a `StateRecord`
        // in field order): every kind but a duplicate.
        let new_state = (kind != DUPLICATE).then(|| {
            let ids = &st.recent_event_ids;
            let keep = (ids.len() + 1).saturating_sub(self.recent_ids);
            let mut out = Vec::with_capacity(160 + 40 * ids.len());
            let mut w = ObjectWriter::open(&mut out);
            w.str("card_id", st.card_id);
            w.str("code", st.code);
            w.str("status", &self.statuses[new_status]);
            w.int("version", new_version);
            w.str("appid", new_appid);
            w.strs(
                "recent_event_ids",
                ids.iter().copied().chain(std::iter::once(event_id)).skip(keep),
            );
            w.opt_str("updated_at", now);
            w.raw("schema_version", b"1");
            w.close();
            out
        });

        // The outcome (`wire.outcome_bytes`, an `OutcomeEvent` in field order):
        // a duplicate reports the state as it was.
        let (out_appid, out_version) = if kind == DUPLICATE {
            (st.appid, st.version)
        } else {
            (new_appid, new_version)
        };
        let mut out = Vec::with_capacity(768);
        let mut w = ObjectWriter::open(&mut out);
        w.raw("specversion", b"\"1.0\"");
        // Derived from the input position: the same event decided again after
        // an aborted transaction gets the same outcome id.
        w.str("id", &format!("{topic}/{partition}/{offset}"));
        w.str("source", &self.outcome_source);
        w.str("type", &self.outcome_types[kind]);
        w.opt_str("time", now);
        w.str("subject", &expected);
        let mut data = w.object("data");
        data.str("card_id", card_id);
        data.str("code", code);
        data.str("appid", out_appid);
        data.str("event_id", event_id);
        data.str("event_type", type_);
        data.str("from_status", &self.statuses[current]);
        data.str("requested_status", &self.statuses[requested]);
        data.int("version", out_version);
        data.opt_str("processed_at", now);
        data.opt_str(
            "to_status",
            (kind == ACCEPTED).then(|| self.statuses[new_status].as_str()),
        );
        data.opt_str("reason", reason.map(|r| self.reasons[r].as_str()));
        data.opt_str("trigger", trigger);
        data.int("source_partition", partition);
        data.int("source_offset", offset);
        data.opt_str("event_time", e.time);
        if wechat {
            data.str("origin", "wechat");
            data.raw("legal", if legal_report { b"true" } else { b"false" });
        } else {
            data.str("origin", "upstream");
            data.raw("legal", b"null");
        }
        data.raw("idempotency_key", b"null");
        data.close();
        w.str("datacontenttype", "application/json");
        w.close();

        Some(Decided {
            kind,
            legal: (wechat && kind != DUPLICATE).then_some(legal_report),
            outcome: out,
            state: new_state,
        })
    }
}

#[pymodule]
fn invoice_sm_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Step>()?;
    Ok(())
}
