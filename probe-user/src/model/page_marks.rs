//! How the human views write a file's page count, so that a reader of the
//! table sees what the JSON says: the pages written, of them those only in
//! a large-folio span (kernel granularity: the kernel made them writable
//! together), and beside them the pages only possibly written (tmpfs pages
//! mapped writable by a read fault, whose stores the kernel never sees).

/// A file's page counts as the views show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageMarks {
    /// Pages written through shared mappings, spans included.
    pub written: u64,
    /// Of `written`, those without a write fault of their own.
    pub span: u64,
    /// Pages possibly written, not in `written`.
    pub possible: u64,
}

impl PageMarks {
    /// For tables read by people: `3`, `16384 (16352 span)`,
    /// `3 (+2 possible)`, `5 (2 span, +3 possible)`.
    pub fn text(&self) -> String {
        let marks: Vec<String> = [
            (self.span > 0).then(|| format!("{} span", self.span)),
            (self.possible > 0).then(|| format!("+{} possible", self.possible)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if marks.is_empty() {
            self.written.to_string()
        } else {
            format!("{} ({})", self.written, marks.join(", "))
        }
    }

    /// For narrow columns: the count with a mark each, `16384~` (some
    /// only in spans), `3?` (more possibly written), `5~?`.
    pub fn flagged(&self) -> String {
        let mut cell = self.written.to_string();
        if self.span > 0 {
            cell.push('~');
        }
        if self.possible > 0 {
            cell.push('?');
        }
        cell
    }

    /// One token, for columns read by scripts: `3`, `16384~16352` (of which
    /// span), `3+2?` (and possibly), `5~2+3?`.
    pub fn token(&self) -> String {
        let mut token = self.written.to_string();
        if self.span > 0 {
            token.push_str(&format!("~{}", self.span));
        }
        if self.possible > 0 {
            token.push_str(&format!("+{}?", self.possible));
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_appear_only_when_there_is_something_to_mark() {
        let plain = PageMarks {
            written: 3,
            ..PageMarks::default()
        };
        assert_eq!((plain.text(), plain.token()), ("3".into(), "3".into()));
        let possible = PageMarks {
            written: 3,
            span: 0,
            possible: 2,
        };
        assert_eq!(possible.text(), "3 (+2 possible)");
        assert_eq!(possible.token(), "3+2?");
        let both = PageMarks {
            written: 5,
            span: 2,
            possible: 3,
        };
        assert_eq!(both.text(), "5 (2 span, +3 possible)");
        assert_eq!(both.token(), "5~2+3?");
        assert_eq!(both.flagged(), "5~?");
        let only_possible = PageMarks {
            written: 0,
            span: 0,
            possible: 4,
        };
        assert_eq!(only_possible.text(), "0 (+4 possible)");
    }
}
