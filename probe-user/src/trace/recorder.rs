//! `trace --record FILE`: every decoded event as a JSON line, for replay
//! (the dashboard's snapshot tests are recorded this way). Not the public
//! stream (`--events`): raw device numbers and boot-clock times.

use crate::{
    model::{aggregate::Applied, events::Event, file_record::FileRecord},
    session::EventObserver,
    trace::json_lines::JsonLines,
};

pub struct Recorder(pub JsonLines);

impl EventObserver for Recorder {
    fn observe(&mut self, event: &Event, _applied: &Applied, _file: Option<&FileRecord>) {
        self.0.write(event);
    }
}
