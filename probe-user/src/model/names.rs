//! File names as the kernel has them: bytes, not text.
//!
//! Linux names are any bytes but `/` and NUL. They are kept exact
//! everywhere and turned into text only at the edges: JSON gets the name
//! as is when it is UTF-8, else an escaped form plus the exact bytes in
//! hex; terminals get control characters escaped, so a name can never
//! move the cursor or rewrite the report's lines.

use std::{
    borrow::Cow,
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// One path component's exact bytes. Serialized as a string when it is
/// UTF-8, else as an array of bytes (recordings stay readable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameBytes(pub Vec<u8>);

impl NameBytes {
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
}

impl From<&str> for NameBytes {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl PartialEq<&str> for NameBytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl serde::Serialize for NameBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(&self.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for NameBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(match Form::deserialize(deserializer)? {
            Form::Text(text) => Self(text.into_bytes()),
            Form::Bytes(bytes) => Self(bytes),
        })
    }
}

/// The path as JSON text: itself when UTF-8; otherwise each byte that is
/// not part of valid UTF-8 as `\xNN` (and then the exact bytes are given
/// by [`hex_if_not_utf8`], so two names never share a JSON identity).
pub fn json_text(path: &Path) -> Cow<'_, str> {
    let bytes = path.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(escape_invalid(bytes)),
    }
}

/// The exact bytes in lowercase hex, only for names that are not UTF-8.
pub fn hex_if_not_utf8(path: &Path) -> Option<String> {
    let bytes = path.as_os_str().as_bytes();
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A process name (the kernel's `comm`, at most 15 bytes, any but NUL)
/// as text: itself when UTF-8; otherwise invalid bytes as `\xNN` followed
/// by ` (not UTF-8: HEX)`. That form is longer than any real name, and
/// holds the exact bytes, so two names never share one text (in labels,
/// filters and reports alike).
pub fn comm_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} (not UTF-8: {hex})", escape_invalid(bytes))
        }
    }
}

fn escape_invalid(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(bytes) {
            Ok(rest) => {
                out.push_str(rest);
                return out;
            }
            Err(err) => {
                let (valid, after) = bytes.split_at(err.valid_up_to());
                // from_utf8 vouched for this prefix.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = err.error_len().unwrap_or(after.len());
                for byte in &after[..bad] {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
                bytes = &after[bad..];
            }
        }
    }
}

/// Text safe to print on a terminal: control characters (newline, ESC,
/// BEL, CR, DEL, C1) and backslashes escaped, so what is shown can be
/// told apart and never acts on the terminal.
pub fn terminal_text(text: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\\';
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path from bytes.
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names_that_are_not_utf8_never_read_as_another_name() {
        assert_eq!(comm_text(b"postgres"), "postgres");
        let invalid = comm_text(b"a\xff");
        assert_eq!(invalid, "a\\xff (not UTF-8: 61ff)");
        // Longer than any real name (15 bytes): no collision is possible.
        assert!(invalid.len() > 15);
        assert_ne!(comm_text(b"a\xfe"), comm_text("a\u{fffd}".as_bytes()));
    }

    #[test]
    fn utf8_names_are_kept_as_is_in_json() {
        let path = path_from_bytes("/d/é\nx".as_bytes());
        assert_eq!(json_text(&path), "/d/é\nx");
        assert_eq!(hex_if_not_utf8(&path), None);
    }

    #[test]
    fn invalid_bytes_are_escaped_and_given_exactly() {
        let path = path_from_bytes(b"/d/a\xffb\xc3");
        assert_eq!(json_text(&path), "/d/a\\xffb\\xc3");
        assert_eq!(hex_if_not_utf8(&path).as_deref(), Some("2f642f61ff62c3"));
        // A UTF-8 name spelling the escape is another file: its JSON has
        // no hex, so the two never share an identity.
        let lookalike = path_from_bytes(b"/d/a\\xffb\\xc3");
        assert_eq!(hex_if_not_utf8(&lookalike), None);
    }

    #[test]
    fn terminal_text_escapes_control_characters() {
        assert_eq!(terminal_text("/plain"), "/plain");
        assert_eq!(
            terminal_text("/a\nb\x1b[2J\x07\r\\"),
            "/a\\nb\\u{1b}[2J\\u{7}\\r\\\\"
        );
        assert_eq!(terminal_text("/c1\u{9b}"), "/c1\\u{9b}");
    }

    #[test]
    fn name_bytes_round_trip_through_json() {
        for name in [NameBytes::from("plain"), NameBytes(vec![b'a', 0xff])] {
            let json = serde_json::to_string(&name).unwrap();
            let back: NameBytes = serde_json::from_str(&json).unwrap();
            assert_eq!(back, name);
        }
        assert_eq!(
            serde_json::to_string(&NameBytes::from("x")).unwrap(),
            "\"x\""
        );
    }
}
