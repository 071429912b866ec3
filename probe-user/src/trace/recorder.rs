//! `trace --record FILE`: every decoded event as a JSON line, for replay
//! (the dashboard's snapshot tests are recorded this way).

use std::{
    cell::RefCell,
    fs::File,
    io::{BufWriter, Write as _},
    rc::Rc,
};

use crate::{
    model::{aggregate::Applied, events::Event},
    session::EventObserver,
};

/// The recording, shared by the session (which feeds it) and `trace`
/// (which flushes it at the end and hears of any write error).
#[derive(Clone)]
pub struct Recorder(Rc<RefCell<Recording>>);

struct Recording {
    /// None once a write failed: the recording stops there.
    out: Option<BufWriter<File>>,
    error: Option<std::io::Error>,
}

impl Recorder {
    pub fn new(file: File) -> Self {
        Self(Rc::new(RefCell::new(Recording {
            out: Some(BufWriter::new(file)),
            error: None,
        })))
    }

    /// Flushes the recording; the first write error, if any, comes back.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut recording = self.0.borrow_mut();
        if let Some(err) = recording.error.take() {
            return Err(err);
        }
        match recording.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl EventObserver for Recorder {
    fn observe(&mut self, event: &Event, _applied: &Applied) {
        let mut recording = self.0.borrow_mut();
        let Some(out) = recording.out.as_mut() else {
            return;
        };
        let written = serde_json::to_writer(&mut *out, event)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(err) = written {
            log::warn!("recording stopped: {err}");
            recording.out = None;
            recording.error = Some(err);
        }
    }
}
