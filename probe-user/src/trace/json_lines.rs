//! A lines sink (JSON lines, or text) shared by the session's observers
//! (which write to it) and `trace` (which flushes it and hears of the
//! first write error).

use std::{
    cell::RefCell,
    io::{BufWriter, Write},
    rc::Rc,
};

#[derive(Clone)]
pub struct JsonLines(Rc<RefCell<Sink>>);

struct Sink {
    /// None once a write failed: the lines stop there.
    out: Option<BufWriter<Box<dyn Write>>>,
    error: Option<std::io::Error>,
}

impl JsonLines {
    pub fn new(out: Box<dyn Write>) -> Self {
        Self(Rc::new(RefCell::new(Sink {
            out: Some(BufWriter::new(out)),
            error: None,
        })))
    }

    /// Writes one value as one line; after a failure, nothing more.
    pub fn write<T: serde::Serialize>(&self, value: &T) {
        self.write_with(|out| {
            serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)
        });
    }

    /// Writes one line of text (without its newline).
    pub fn write_text(&self, line: &str) {
        self.write_with(|out| out.write_all(line.as_bytes()));
    }

    fn write_with(
        &self,
        write: impl FnOnce(&mut BufWriter<Box<dyn Write>>) -> std::io::Result<()>,
    ) {
        let mut sink = self.0.borrow_mut();
        let Some(out) = sink.out.as_mut() else {
            return;
        };
        let written = write(out).and_then(|()| out.write_all(b"\n"));
        if let Err(err) = written {
            log::warn!("JSON lines stopped: {err}");
            sink.out = None;
            sink.error = Some(err);
        }
    }

    /// Hands what is buffered to the file or pipe (a reader such as `jq`
    /// or a log shipper sees each batch as it is drained).
    pub fn flush(&self) {
        let mut sink = self.0.borrow_mut();
        if let Some(Err(err)) = sink.out.as_mut().map(Write::flush) {
            sink.out = None;
            sink.error = Some(err);
        }
    }

    /// Flushes; the first write error, if any, comes back.
    pub fn finish(&self) -> std::io::Result<()> {
        self.flush();
        match self.0.borrow_mut().error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose writes all fail.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    #[test]
    fn the_first_error_is_returned_once_and_writing_stops() {
        let lines = JsonLines::new(Box::new(Broken));
        lines.write(&1);
        lines.write(&2);
        let err = lines.finish().expect_err("the flush fails");
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn values_become_one_line_each() {
        let path = std::env::temp_dir().join(format!("json-lines-{}", std::process::id()));
        let lines = JsonLines::new(Box::new(std::fs::File::create(&path).expect("temp file")));
        lines.write(&serde_json::json!({"a": 1}));
        lines.write(&"b");
        lines.finish().expect("written");
        let text = std::fs::read_to_string(&path).expect("read back");
        std::fs::remove_file(&path).ok();
        assert_eq!(text, "{\"a\":1}\n\"b\"\n");
    }
}
