//! `check --from FILE`: a snapshot streamed from disk into the estate.
//!
//! A snapshot of a large tenant is hundreds of megabytes, almost all of it the `subscriptions`
//! array. Reading the file into one buffer would touch every page of it once more, and parsing
//! it as one document would keep the whole text alive until the estate is built. Instead the
//! file is read in chunks and split at the top level of the document: each element of
//! `subscriptions` is handed, as its own small text, to a worker on every core that parses it and
//! turns its lists into typed records ([`SubscriptionPart`]) while the next one is being read.
//! The other members (vault children, role data, HSMs: small) are gathered into one document
//! that is parsed as before. Memory stays at one subscription's text per worker plus the
//! estate itself.
//!
//! The splitter only follows the JSON structure (strings, escapes, brackets); serde still parses
//! and checks every byte. When anything is off — not an object at the top, a syntax error, a
//! truncated file, a member repeated, a subscription that fails validation — the file is loaded
//! again by the whole-document path, whose messages name the first problem with its line and
//! column. Both paths build the same estate (a test compares them on every fixture).

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use serde_json::value::RawValue;

use crate::estate::{Estate, ItemText, SubscriptionPart};
use crate::snapshot::{self, Snapshot, SnapshotError, SubscriptionSnapshot};

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
    let (tx, rx) = sync_channel::<(usize, Element)>(workers);
    let rx = Mutex::new(rx);
    let (split, parts) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| build_parts(&rx, name)))
            .collect();
        let split = split_top_level(r, |i, text| tx.send((i, text)).is_ok());
        drop(tx);
        tracing::debug!("{name}: read and split in {:?}", t.elapsed());
        let mut parts = Vec::new();
        let mut ok = true;
        for h in handles {
            match h.join() {
                Ok(Some(p)) => parts.extend(p),
                Ok(None) => ok = false,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (split, ok.then_some(parts))
    });
    tracing::debug!("{name}: subscriptions built in {:?}", t.elapsed());
    let (Some(rest), Some(mut parts)) = (split?, parts) else {
        return Ok(None);
    };
    parts.sort_unstable_by_key(|(i, _)| *i);
    if parts.iter().enumerate().any(|(n, (i, _))| n != *i) {
        return Ok(None);
    }
    let snap: Snapshot<&RawValue> = match Snapshot::parse_borrowed(&rest, name) {
        Ok(s) if s.subscriptions.is_empty() => s,
        _ => return Ok(None),
    };
    tracing::debug!("{name}: the rest parsed in {:?}", t.elapsed());
    let parts = parts.into_iter().map(|(_, p)| p).collect();
    Ok(Some(Estate::from_parts(parts, &snap, principal)))
}

/// One element of `subscriptions`: its text, and where each raw item is in it.
struct Element {
    text: Vec<u8>,
    items: SubscriptionSnapshot<(usize, usize)>,
}

/// A worker: builds subscriptions until the splitter is done. `None` as soon as one does not
/// validate (the other workers still drain the channel).
fn build_parts(
    rx: &Mutex<Receiver<(usize, Element)>>,
    name: &str,
) -> Option<Vec<(usize, SubscriptionPart)>> {
    let mut out = Vec::new();
    let mut ok = true;
    loop {
        // A poisoned lock means another worker panicked; that panic is re-raised on join.
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return None,
        };
        let Ok((i, el)) = next else { break };
        if !ok {
            continue;
        }
        let text = &el.text;
        let sub = el.items.map_items(|(a, b)| ItemText(&text[a..b]));
        if snapshot::validate_subscription(i, &sub, name).is_ok() {
            out.push((i, SubscriptionPart::build(&sub)));
        } else {
            ok = false;
        }
    }
    ok.then_some(out)
}

/// Reads the top-level object from `r`, hands each element of `subscriptions` to `each` (with
/// its index) and returns the other members as one JSON object with `"subscriptions": []`.
/// `Ok(None)` when the document is not an object of that shape, is truncated, or `each`
/// refused an element.
fn split_top_level(
    r: impl Read,
    mut each: impl FnMut(usize, Element) -> bool,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut src = Source::new(r);
    let mut rest = b"{".to_vec();
    let mut seen_subscriptions = false;
    if src.skip_ws()? != Some(b'{') {
        return Ok(None);
    }
    src.pos += 1;
    let mut first = true;
    loop {
        match src.skip_ws()? {
            Some(b'}') => {
                src.pos += 1;
                break;
            }
            Some(b',') if !first => {
                src.pos += 1;
                src.skip_ws()?;
            }
            Some(_) if first => {}
            _ => return Ok(None),
        }
        first = false;
        let Some(key) = src.value()? else {
            return Ok(None);
        };
        let Ok(key_text) = serde_json::from_slice::<String>(&key) else {
            return Ok(None);
        };
        if src.skip_ws()? != Some(b':') {
            return Ok(None);
        }
        src.pos += 1;
        if rest.len() > 1 {
            rest.push(b',');
        }
        rest.extend_from_slice(&key);
        rest.push(b':');
        if key_text == "subscriptions" {
            if seen_subscriptions || src.skip_ws()? != Some(b'[') {
                return Ok(None);
            }
            seen_subscriptions = true;
            src.pos += 1;
            let mut i = 0;
            loop {
                match src.skip_ws()? {
                    Some(b']') => {
                        src.pos += 1;
                        break;
                    }
                    Some(b',') if i > 0 => {
                        src.pos += 1;
                    }
                    Some(_) if i == 0 => {}
                    _ => return Ok(None),
                }
                src.skip_ws()?;
                let Some(el) = src.subscription()? else {
                    return Ok(None);
                };
                if !each(i, el) {
                    return Ok(None);
                }
                i += 1;
            }
            rest.extend_from_slice(b"[]");
        } else {
            src.skip_ws()?;
            let Some(v) = src.value()? else {
                return Ok(None);
            };
            rest.extend_from_slice(&v);
        }
    }
    if src.skip_ws()?.is_some() {
        return Ok(None);
    }
    rest.push(b'}');
    Ok(Some(rest))
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

    /// An element of `subscriptions`, parsed where it lies with its items kept as raw text, so
    /// the worker that builds it only reads each item once more, into its typed record.
    fn subscription(&mut self) -> std::io::Result<Option<Element>> {
        if self.buf.get(self.pos) != Some(&b'{') {
            return Ok(None);
        }
        loop {
            let text = &self.buf[self.pos..];
            let base = text.as_ptr() as usize;
            let mut values = serde_json::Deserializer::from_slice(text)
                .into_iter::<SubscriptionSnapshot<&RawValue>>();
            match values.next() {
                Some(Ok(sub)) => {
                    let end = values.byte_offset();
                    let items = sub.map_items(|raw| {
                        let start = raw.get().as_ptr() as usize - base;
                        (start, start + raw.get().len())
                    });
                    let text = text[..end].to_vec();
                    self.pos += end;
                    return Ok(Some(Element { text, items }));
                }
                Some(Err(e)) if e.is_eof() && !self.eof => self.read_on()?,
                _ => return Ok(None),
            }
        }
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
        let rest = split_top_level(text, |i, el| {
            assert_eq!(i, subs.len());
            subs.push(String::from_utf8(el.text).unwrap());
            true
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
                r#"{"b":[1,{"c":"\\"}],"subscription_id":"y"}"#
            ]
        );
        assert_eq!(
            rest,
            r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[],"vaults":{"v": {"k": "]}"}},"n":-1.5e3,"t":true}"#
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
        let rest = split_top_level(Trickle(doc, 3), |_, el| {
            let items = el.items.map_items(|(a, b)| el.text[a..b].to_vec());
            let disks = items.disks.unwrap().value.unwrap();
            assert_eq!(disks, [br#"{"id":"d\"]"}"#.to_vec(), b"7".to_vec()]);
            subs.push(String::from_utf8(el.text).unwrap());
            true
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
