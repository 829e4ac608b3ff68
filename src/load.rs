//! `check --from FILE`: a snapshot streamed from disk into the estate.
//!
//! A snapshot of a large tenant is hundreds of megabytes, almost all of it the `subscriptions`
//! array and the `vaults` map. Reading the file into one buffer would touch every page of it
//! once more, and parsing it as one document would keep the whole text alive until the estate
//! is built. Instead the file is read in chunks and split at the top level: each element of
//! `subscriptions` and each entry of `vaults` is parsed where it lies, with its raw items kept
//! as positions, copied into a recycled buffer and handed to a worker on every core, which turns
//! the items into typed records ([`Parts`]) while the splitter reads
//! on. The few other members (role data, HSMs, errors) are gathered into one small document
//! parsed as before. Memory stays at a few texts in flight plus the estate itself, and every
//! item is scanned twice: once to find it, once into its record.
//!
//! When anything is off — not an object at the top, a syntax error, a truncated file, a member
//! repeated, a subscription that fails validation — the file is loaded again by the
//! whole-document path, whose messages name the first problem with its line and column. Both
//! paths build the same estate (a test compares them on every fixture).

use std::io::Read;
use std::path::Path;

use serde_json::value::RawValue;

use crate::estate::{Estate, ItemText, Parts};
use crate::snapshot::{self, Snapshot, SnapshotError, SubscriptionSnapshot, VaultChildren};

/// Bytes read from the file at a time.
const CHUNK: usize = 16 << 20;

/// Loads the estate of the snapshot at `path`. `principal` is `--backup-principal-id`.
pub fn estate_from_file(path: &Path, principal: Option<&str>) -> Result<Estate, SnapshotError> {
    let name = path.display().to_string();
    let io = |source| SnapshotError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    match streamed(file, &name, principal, crate::par::threads()).map_err(io)? {
        Some(estate) => Ok(estate),
        None => whole(path, principal),
    }
}

/// The whole-document path: one buffer, one parse. Used for anything the splitter refuses, so
/// the error (if any) is the one that names the problem precisely.
pub fn whole(path: &Path, principal: Option<&str>) -> Result<Estate, SnapshotError> {
    let bytes = snapshot::read(path)?;
    let snap = Snapshot::parse_borrowed(&bytes, &path.display().to_string())?;
    Ok(Estate::from_snapshot(&snap, principal))
}

/// Streams `r` into an estate; `Ok(None)` when the document is not a snapshot the splitter can
/// take (the caller then loads it whole).
pub fn streamed(
    r: impl Read,
    name: &str,
    principal: Option<&str>,
    workers: usize,
) -> std::io::Result<Option<Estate>> {
    let workers = workers.max(1);
    let t = std::time::Instant::now();
    // Texts go back to the splitter to be filled again: a few buffers reused instead of fresh
    // pages for every subscription.
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (split, built) = crate::par::pipeline(
        workers,
        workers,
        |send| {
            let spare = || spare_rx.try_recv().unwrap_or_default();
            let split = split_top_level(r, spare, send);
            tracing::debug!("{name}: read and split in {:?}", t.elapsed());
            split
        },
        |built: &mut Built, job| {
            if let Some(text) = built.add(job, name) {
                // The splitter may have finished: then the buffer is simply dropped.
                let _ = spare_tx.send(text);
            }
        },
    );
    tracing::debug!(
        "{name}: subscriptions and vaults built in {:?}",
        t.elapsed()
    );
    let Some(rest) = split? else {
        return Ok(None);
    };
    if built.iter().any(|b| b.refused) {
        return Ok(None);
    }
    let snap: Snapshot<&RawValue> = match Snapshot::parse_borrowed(&rest, name) {
        Ok(s) if s.subscriptions.is_empty() && s.vaults.is_empty() => s,
        _ => return Ok(None),
    };
    tracing::debug!("{name}: the rest parsed in {:?}", t.elapsed());
    let parts = built.into_iter().map(|b| b.parts).collect();
    Ok(Some(Parts::into_estate(parts, &snap, principal)))
}

/// A text and where each raw item is in it.
struct Element<T> {
    text: Vec<u8>,
    items: T,
}

type Span = (usize, usize);

/// What the splitter hands to the workers.
enum Job {
    /// `subscriptions[i]`.
    Subscription(usize, Box<Element<SubscriptionSnapshot<Span>>>),
    /// `vaults[id]`.
    Vault(String, Box<Element<VaultChildren<Span>>>),
}

/// What one worker built, and whether a subscription failed validation (then the whole
/// document path names the problem).
#[derive(Default)]
struct Built {
    parts: Parts,
    refused: bool,
}

impl Built {
    /// Builds one job; returns its text for reuse.
    fn add(&mut self, job: Job, name: &str) -> Option<Vec<u8>> {
        if self.refused {
            return None;
        }
        match job {
            Job::Subscription(i, el) => {
                let Element { text, items } = *el;
                let sub = items.map_items(|(a, b)| ItemText(&text[a..b]));
                match snapshot::validate_subscription(i, &sub, name) {
                    Ok(()) => self.parts.subscription(i, &sub),
                    Err(_) => self.refused = true,
                }
                drop(sub);
                Some(text)
            }
            Job::Vault(id, el) => {
                let Element { text, items } = *el;
                let children = items.map_items(|(a, b)| ItemText(&text[a..b]));
                self.parts.vault(id, &children);
                drop(children);
                Some(text)
            }
        }
    }
}

/// Reads the top-level object from `r`, hands each element of `subscriptions` and each entry of
/// `vaults` to `each`, and returns the other members as one JSON object (with `"subscriptions":
/// []` and `"vaults": {}`). `Ok(None)` when the document is not an object of that shape, is
/// truncated.
fn split_top_level(
    r: impl Read,
    spare: impl FnMut() -> Vec<u8>,
    each: impl FnMut(Job),
) -> std::io::Result<Option<Vec<u8>>> {
    match split(r, spare, each) {
        Ok(rest) => Ok(Some(rest)),
        Err(Stop::Refused) => Ok(None),
        Err(Stop::Io(e)) => Err(e),
    }
}

/// Why the splitter stopped early.
enum Stop {
    /// Not a snapshot it can take (the whole-document path says why).
    Refused,
    Io(std::io::Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

fn split(
    r: impl Read,
    mut spare: impl FnMut() -> Vec<u8>,
    mut each: impl FnMut(Job),
) -> Result<Vec<u8>, Stop> {
    let mut src = Source::new(r);
    let mut rest = b"{".to_vec();
    let (mut seen_subscriptions, mut seen_vaults) = (false, false);
    if src.skip_ws()? != Some(b'{') {
        return Err(Stop::Refused);
    }
    src.pos += 1;
    let mut first = true;
    while let Some(key) = src.next_member(&mut first)? {
        if rest.len() > 1 {
            rest.push(b',');
        }
        rest.extend_from_slice(&key.0);
        rest.push(b':');
        match key.1.as_str() {
            "subscriptions" if !seen_subscriptions => {
                seen_subscriptions = true;
                if src.skip_ws()? != Some(b'[') {
                    return Err(Stop::Refused);
                }
                src.pos += 1;
                let mut i = 0;
                while src.next_element(i == 0)? {
                    let el = src.element(spare(), subscription_spans)?;
                    each(Job::Subscription(i, Box::new(el)));
                    i += 1;
                }
                rest.extend_from_slice(b"[]");
            }
            "vaults" if !seen_vaults => {
                seen_vaults = true;
                if src.skip_ws()? != Some(b'{') {
                    return Err(Stop::Refused);
                }
                src.pos += 1;
                let mut first = true;
                // A repeated id is left to the whole-document path (which keeps the last).
                let mut ids = std::collections::HashSet::new();
                while let Some((_, id)) = src.next_member(&mut first)? {
                    if !ids.insert(id.clone()) {
                        return Err(Stop::Refused);
                    }
                    let el = src.element(spare(), vault_spans)?;
                    each(Job::Vault(id, Box::new(el)));
                }
                rest.extend_from_slice(b"{}");
            }
            "subscriptions" | "vaults" => return Err(Stop::Refused),
            _ => rest.extend_from_slice(&src.value()?.ok_or(Stop::Refused)?),
        }
    }
    if src.skip_ws()?.is_some() {
        return Err(Stop::Refused);
    }
    rest.push(b'}');
    Ok(rest)
}

fn subscription_spans(
    text: &[u8],
) -> Result<(SubscriptionSnapshot<Span>, usize), serde_json::Error> {
    parse_where_it_lies(text, |s: SubscriptionSnapshot<&RawValue>, f| s.map_items(f))
}

fn vault_spans(text: &[u8]) -> Result<(VaultChildren<Span>, usize), serde_json::Error> {
    parse_where_it_lies(text, |v: VaultChildren<&RawValue>, f| v.map_items(f))
}

/// Parses the value at the start of `text` as `T` with its items borrowed, and turns those into
/// their positions in `text`. Also returns where the value ends.
fn parse_where_it_lies<'a, T: serde::Deserialize<'a>, U>(
    text: &'a [u8],
    to_spans: impl FnOnce(T, &mut dyn FnMut(&'a RawValue) -> Span) -> U,
) -> Result<(U, usize), serde_json::Error> {
    let base = text.as_ptr() as usize;
    let mut values = serde_json::Deserializer::from_slice(text).into_iter::<T>();
    match values.next() {
        Some(Ok(t)) => {
            let end = values.byte_offset();
            let mut span = |raw: &'a RawValue| {
                let start = raw.get().as_ptr() as usize - base;
                (start, start + raw.get().len())
            };
            Ok((to_spans(t, &mut span), end))
        }
        Some(Err(e)) => Err(e),
        None => Err(serde::de::Error::custom("no value")),
    }
}

/// The file, read a chunk at a time; `buf[pos..]` is what has been read and not consumed.
struct Source<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<R: Read> Source<R> {
    fn new(r: R) -> Self {
        Source {
            r,
            buf: Vec::with_capacity(CHUNK),
            pos: 0,
            eof: false,
        }
    }

    /// Appends the next chunk of the file to `buf`; sets `eof` when there is none.
    fn read_more(&mut self) -> std::io::Result<()> {
        let n = (&mut self.r)
            .take(CHUNK as u64)
            .read_to_end(&mut self.buf)?;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The next byte that is not whitespace (not consumed), `None` at the end of the file.
    fn skip_ws(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            while let Some(&b) = self.buf.get(self.pos) {
                if !b.is_ascii_whitespace() {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if self.eof {
                return Ok(None);
            }
            self.buf.clear();
            self.pos = 0;
            self.read_more()?;
        }
    }

    /// The text of the JSON value that starts at `pos` (an object, array, string or scalar),
    /// consumed. `None` when the file ends inside it or it is not JSON. serde_json finds where a
    /// container ends (its scan is the fastest there is here); a value that runs past what has
    /// been read is scanned again once more has been read, at least doubling what is held, so a
    /// value is scanned at most about twice.
    fn value(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(first) = self.buf.get(self.pos).copied() else {
            return Ok(None);
        };
        match first {
            b'{' | b'[' => loop {
                let text = &self.buf[self.pos..];
                let mut values =
                    serde_json::Deserializer::from_slice(text).into_iter::<serde::de::IgnoredAny>();
                match values.next() {
                    Some(Ok(_)) => {
                        let end = self.pos + values.byte_offset();
                        let v = self.buf[self.pos..end].to_vec();
                        self.pos = end;
                        return Ok(Some(v));
                    }
                    Some(Err(e)) if e.is_eof() && !self.eof => self.read_on()?,
                    _ => return Ok(None),
                }
            },
            b'}' | b']' | b',' | b':' => Ok(None),
            _ => self.scalar(first == b'"'),
        }
    }

    /// The value at `pos`, parsed where it lies by `parse` (which says where it ends), and
    /// copied into `out`.
    fn element<U>(
        &mut self,
        mut out: Vec<u8>,
        parse: impl Fn(&[u8]) -> Result<(U, usize), serde_json::Error>,
    ) -> Result<Element<U>, Stop> {
        if self.buf.get(self.pos) != Some(&b'{') {
            return Err(Stop::Refused);
        }
        loop {
            match parse(&self.buf[self.pos..]) {
                Ok((items, end)) => {
                    out.clear();
                    out.extend_from_slice(&self.buf[self.pos..self.pos + end]);
                    self.pos += end;
                    return Ok(Element { text: out, items });
                }
                Err(e) if e.is_eof() && !self.eof => self.read_on()?,
                Err(_) => return Err(Stop::Refused),
            }
        }
    }

    /// Past the separator before the next member of an object: its key (as text and as read),
    /// with the `:` consumed; `None` after the closing brace. Clears `first`.
    fn next_member(&mut self, first: &mut bool) -> Result<Option<(Vec<u8>, String)>, Stop> {
        match self.skip_ws()? {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !*first => {
                self.pos += 1;
                self.skip_ws()?;
            }
            Some(_) if *first => {}
            _ => return Err(Stop::Refused),
        }
        *first = false;
        let key = self.value()?.ok_or(Stop::Refused)?;
        let text = serde_json::from_slice::<String>(&key).map_err(|_| Stop::Refused)?;
        if self.skip_ws()? != Some(b':') {
            return Err(Stop::Refused);
        }
        self.pos += 1;
        self.skip_ws()?;
        Ok(Some((key, text)))
    }

    /// Past the separator before the next element of an array: `false` after the closing
    /// bracket.
    fn next_element(&mut self, first: bool) -> Result<bool, Stop> {
        match self.skip_ws()? {
            Some(b']') => {
                self.pos += 1;
                return Ok(false);
            }
            Some(b',') if !first => self.pos += 1,
            Some(_) if first => {}
            _ => return Err(Stop::Refused),
        }
        self.skip_ws()?;
        Ok(true)
    }

    /// Drops what has been consumed and reads on, at least doubling what is held.
    fn read_on(&mut self) -> std::io::Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let held = self.buf.len();
        while !self.eof && self.buf.len() < 2 * held.max(CHUNK) {
            self.read_more()?;
        }
        Ok(())
    }

    /// A string or other scalar (keys, numbers, literals): short, scanned by hand.
    fn scalar(&mut self, string: bool) -> std::io::Result<Option<Vec<u8>>> {
        let mut start = self.pos;
        let mut i = self.pos + 1;
        loop {
            let end = if string {
                memchr::memchr_iter(b'"', &self.buf[i..])
                    .map(|k| i + k)
                    .find(|&at| !escaped(&self.buf, start, at))
                    .map(|at| at + 1)
            } else {
                self.buf[i..]
                    .iter()
                    .position(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                    .map(|k| i + k)
            };
            if let Some(end) = end {
                self.pos = end;
                return Ok(Some(self.buf[start..end].to_vec()));
            }
            if self.eof {
                // A number or literal may end the file (not a snapshot, but not truncated).
                if string {
                    return Ok(None);
                }
                self.pos = self.buf.len();
                return Ok(Some(self.buf[start..].to_vec()));
            }
            // Keep only the value's text so far, then read on.
            self.buf.drain(..start);
            i = self.buf.len();
            start = 0;
            self.pos = 0;
            self.read_more()?;
        }
    }
}

/// Whether the quote at `at` is escaped: preceded by an odd number of backslashes (counted back
/// to the value's first byte, which is never a backslash).
fn escaped(buf: &[u8], start: usize, at: usize) -> bool {
    let backslashes = buf[start..at]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    backslashes % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes per read: every chunk boundary is met.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn split(text: &[u8]) -> Option<(Vec<String>, String)> {
        let mut subs = Vec::new();
        let rest = split_top_level(text, Vec::new, |job| match job {
            Job::Subscription(i, el) => {
                assert_eq!(i, subs.len());
                subs.push(String::from_utf8(el.text).unwrap());
            }
            Job::Vault(id, el) => {
                subs.push(format!("{id} = {}", String::from_utf8_lossy(&el.text)))
            }
        })
        .unwrap()?;
        Some((subs, String::from_utf8(rest).unwrap()))
    }

    #[test]
    fn splits_subscriptions_from_the_rest() {
        let doc = br#" { "schema" : "cvm-backup/snapshot/v1", "subscriptions" : [ {"subscription_id":"x\"}]"} , {"b":[1,{"c":"\\"}],"subscription_id":"y"} ], "vaults": {"v": {"k": "]}"}}, "n": -1.5e3 , "t":true } "#;
        let (subs, rest) = split(doc).unwrap();
        assert_eq!(
            subs,
            [
                r#"{"subscription_id":"x\"}]"}"#,
                r#"{"b":[1,{"c":"\\"}],"subscription_id":"y"}"#,
                r#"v = {"k": "]}"}"#
            ]
        );
        assert_eq!(
            rest,
            r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[],"vaults":{},"n":-1.5e3,"t":true}"#
        );
    }

    #[test]
    fn refuses_what_is_not_a_snapshot_object() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"subscriptions\": [{\"a\": 1}",
            b"{\"subscriptions\": [{\"a\": \"1}]}",
            b"{\"subscriptions\": {}}",
            b"{\"subscriptions\": [], \"subscriptions\": []}",
            b"{\"vaults\": {}, \"vaults\": {}}",
            b"{\"vaults\": {\"v\": {}, \"v\": {}}}",
            b"{\"vaults\": {\"v\": 1}}",
            b"{\"vaults\": {\"v\": {}, }}",
            b"{\"vaults\": []}",
            b"{\"a\": 1} trailing",
            b"{\"a\" 1}",
            b"{,\"a\": 1}",
            b"{\"a\": 1,}",
            b"{\"subscriptions\": [,{}]}",
        ] {
            assert!(split(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(split(b"{}").unwrap().1, "{}");
    }

    /// Values cut at every chunk boundary: the splitter reads on and keeps the text whole.
    #[test]
    fn values_across_chunk_boundaries() {
        let doc = br#"{"subscriptions":[{"a":"\\\"]}","b":[[[]]],"subscription_id":"s","disks":{"value":[{"id":"d\"]"}, 7]}}],"x":"\u0041"}"#;
        let mut subs = Vec::new();
        let rest = split_top_level(Trickle(doc, 3), Vec::new, |job| {
            let Job::Subscription(_, el) = job else {
                panic!("a vault")
            };
            let items = el.items.map_items(|(a, b)| el.text[a..b].to_vec());
            let disks = items.disks.unwrap().value.unwrap();
            assert_eq!(disks, [br#"{"id":"d\"]"}"#.to_vec(), b"7".to_vec()]);
            subs.push(String::from_utf8(el.text).unwrap());
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            subs,
            [
                r#"{"a":"\\\"]}","b":[[[]]],"subscription_id":"s","disks":{"value":[{"id":"d\"]"}, 7]}}"#
            ]
        );
        assert_eq!(
            String::from_utf8(rest).unwrap(),
            r#"{"subscriptions":[],"x":"\u0041"}"#
        );
    }

    /// Every shipped snapshot gives the same report streamed (one worker, several, one byte at
    /// a time) as loaded whole.
    #[test]
    fn streamed_and_whole_build_the_same_estate() {
        let files = crate::rules::testutil::every_snapshot_file();
        let settings =
            crate::rules::Settings::from_ruleset(&crate::ruleset::load("2026-01").unwrap());
        let now = time::macros::datetime!(2026-11-28 20:00 UTC);
        let report = |e: &Estate| {
            let policy = crate::engine::Policy::new(now.date());
            let scope = crate::engine::Scope::default();
            let r = crate::engine::evaluate(e, &settings, &policy, &scope, now).report;
            crate::output::json_v1::render(&r)
        };
        assert!(files.len() > 100);
        for f in files {
            let whole = report(&whole(&f, None).unwrap());
            let bytes = std::fs::read(&f).unwrap();
            for workers in [1, 3] {
                let e = streamed(&bytes[..], "x", None, workers).unwrap();
                let e = e.unwrap_or_else(|| panic!("{}: refused", f.display()));
                assert_eq!(report(&e), whole, "{} ({workers} workers)", f.display());
            }
            let e = streamed(Trickle(&bytes, 1), "x", None, 2).unwrap().unwrap();
            assert_eq!(report(&e), whole, "{} (one byte at a time)", f.display());
        }
    }

    #[test]
    fn a_broken_file_is_left_to_the_whole_document_path() {
        let ok =
            br#"{"schema": "cvm-backup/snapshot/v1", "subscriptions": [{"subscription_id": "a"}]}"#;
        assert!(streamed(&ok[..], "x", None, 2).unwrap().is_some());
        for bad in [
            &br#"{"schema": "cvm-backup/snapshot/v1", "subscriptions": [{"subscription_id": ""}]}"#
                [..],
            br#"{"schema": "cvm-backup/snapshot/v1", "subscriptions": [{"subscription_id": 5}]}"#,
            br#"{"schema": "cvm-backup/snapshot/v2", "subscriptions": []}"#,
            br#"{"schema": "cvm-backup/snapshot/v1", "subscriptions": [{"subscription_id": "a"}"#,
            br#"{"schema": "cvm-backup/snapshot/v1"}"#,
        ] {
            let r = streamed(bad, "x", None, 2).unwrap();
            assert!(r.is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
