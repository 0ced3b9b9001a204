//! RETR and TOP: mapping the message file and streaming the body into the
//! connection's output under its bound.
#![forbid(unsafe_code)]

use std::io;

use super::Conn;
use crate::engine::body::BodyStream;
use crate::engine::context::Cx;
use crate::engine::error::ConnError;
use crate::protocol::BodyError;
use crate::wire::Extent;

impl Conn {
    /// Reads or maps the message file for RETR/TOP. The open runs on the
    /// shard: the login scan just read this directory, so the dentry is hot,
    /// and it saves a round trip through the pool per message.
    pub(super) fn open_body(&mut self, index: usize, top_lines: Option<u64>) {
        let Some(mailbox) = &self.mailbox else {
            self.session
                .body_ready(Err(BodyError::Temporary), &mut self.out);
            return;
        };
        let map = match mailbox.open_message(index) {
            Ok(map) => map,
            Err(e) => {
                let path = mailbox.snapshot.path(index);
                let why = if e.kind() == io::ErrorKind::NotFound {
                    BodyError::Vanished
                } else {
                    tracing::error!(file = %path.display(), error = %e, "cannot open message");
                    BodyError::Temporary
                };
                self.session.body_ready(Err(why), &mut self.out);
                return;
            }
        };
        let extent = match top_lines {
            None => Extent::Whole,
            Some(body_lines) => Extent::Top { body_lines },
        };
        // A file as long as its CRLF size has no bare LF: send it raw.
        // Over TLS every byte is encrypted anyway: always transform.
        let crlf =
            map.len() as u64 == mailbox.snapshot.messages[index].octets && self.tls.is_none();
        match BodyStream::new(map, extent, crlf) {
            Ok(body) => {
                self.body = Some(body);
                self.session.body_ready(Ok(()), &mut self.out);
            }
            Err(_) => {
                let path = mailbox.snapshot.path(index);
                tracing::warn!(file = %path.display(), "message file truncated before it was sent");
                self.session
                    .body_ready(Err(BodyError::Temporary), &mut self.out);
            }
        }
    }

    /// Produces more of the body while less than half the output bound is
    /// queued. Returns whether it made progress.
    pub(super) fn fill_body(&mut self, cx: &Cx<'_>) -> Result<bool, ConnError> {
        let queued = self.queued_bytes();
        let Some(body) = &mut self.body else {
            return Ok(false);
        };
        let low_water = cx.settings.output_buffer_bytes / 2;
        if queued >= low_water {
            return Ok(false);
        }
        let limit = self.out.len() + (low_water - queued);
        let progress = body.fill(&mut self.out, limit)?;
        if body.is_done() {
            self.body = None;
            self.session.body_sent();
            if let Some((started, before)) = self.retr_started.take() {
                // The whole reply: status line, body and terminator.
                let octets = self.bytes_sent + self.queued_bytes() as u64 - before;
                cx.cells()
                    .retr(octets, cx.now.saturating_duration_since(started));
            }
            return Ok(true);
        }
        Ok(progress)
    }
}
