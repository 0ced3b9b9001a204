//! A connection's byte plumbing: the receive buffer the backend fills, the
//! output it takes, and TLS between the two and the session.
//!
//! STLS (RFC 2595): once the session has answered STLS, the connection is
//! TLS-starting. Input already buffered after the STLS line is discarded
//! (the client cannot have seen the `+OK`: injected plaintext); anything
//! received from then on is ciphertext and waits, unread, in the TLS input
//! buffer; the `+OK` goes out in plaintext; and only when it has left does
//! TLS turn on and read that buffer. So nothing the client sends after STLS
//! is ever parsed as a command, whatever order a completion backend reports
//! the `+OK`'s send and the next receive in.
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::time::Instant;

use super::Conn;
use crate::engine::body::{BodyStream, RawPlan};
use crate::engine::buffer::InBuf;
use crate::engine::error::ConnError;
use crate::metrics::{ShardCells, TlsResult};
use crate::protocol::Offer;
use crate::tls::TlsLayer;

/// A send buffer larger than this is not kept for reuse.
const SPARE_BYTES_MAX: usize = 16 * 1024;

/// TLS on a connection: the layer and the ciphertext not yet fed to it.
pub(super) struct Tls {
    layer: TlsLayer,
    cipher_in: InBuf,
    /// `Some` while TLS is starting after STLS: the offer the session gets
    /// once the plaintext `+OK` has left and TLS is on.
    starting: Option<Offer>,
    /// The handshake's end (or failure) has been counted.
    handshake_counted: bool,
}

impl Tls {
    /// TLS that is on from the first byte (implicit TLS).
    pub(super) fn on(layer: TlsLayer, bytes: usize) -> Tls {
        Tls {
            layer,
            cipher_in: InBuf::new(bytes),
            starting: None,
            handshake_counted: false,
        }
    }

    /// Takes bytes that arrived before TLS was set up (after a PROXY
    /// header on an implicit-TLS listener: the start of the handshake).
    pub(super) fn take_early(&mut self, plaintext_buffer: &mut InBuf) {
        let early = plaintext_buffer.filled();
        let n = early.len().min(self.cipher_in.space().len());
        self.cipher_in.space()[..n].copy_from_slice(&early[..n]);
        self.cipher_in.commit(n);
        plaintext_buffer.consume(n);
    }

    /// TLS that starts once the queued plaintext has been sent (STLS).
    pub(super) fn starting(layer: TlsLayer, bytes: usize, offer: Offer) -> Tls {
        Tls {
            starting: Some(offer),
            ..Tls::on(layer, bytes)
        }
    }

    fn is_on(&self) -> bool {
        self.starting.is_none()
    }

    /// A ClientHello whose answer is too costly for the shard, once.
    pub(super) fn take_costly_answer(&mut self) -> Option<crate::tls::CostlyAnswer> {
        self.layer.take_costly_answer()
    }

    /// The pool's answer to the ClientHello.
    pub(super) fn answered(
        &mut self,
        answer: crate::tls::Answer,
    ) -> Result<(), crate::tls::TlsError> {
        self.layer.answered(answer)
    }

    /// Counts the handshake's end, once.
    pub(super) fn count_handshake(&mut self, cells: &ShardCells, ok: bool) {
        if !self.handshake_counted {
            self.handshake_counted = true;
            cells.tls_handshake(if ok { TlsResult::Ok } else { TlsResult::Failed });
        }
    }

    /// A description for the login line ("TLSv1.3 ...").
    pub(super) fn describe(&self) -> Option<String> {
        self.layer.describe()
    }
}

/// Bytes handed to the backend to send: queued replies (or transformed
/// body), then possibly raw mmap ranges. The backend owns it until it gives
/// it back with [`Conn::output_done`].
#[derive(Debug)]
pub struct Outgoing {
    buf: Vec<u8>,
    pos: usize,
    raw: Option<Box<RawPlan>>,
}

impl Outgoing {
    /// The bytes to write when they are one slice (no file ranges).
    pub fn contiguous(&self) -> Option<&[u8]> {
        match self.raw {
            None => Some(&self.buf[self.pos..]),
            Some(_) => None,
        }
    }

    /// Fills `iov` (at least `IOVECS_MAX` long) with the slices to write, in
    /// order; returns how many.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        if self.pos < self.buf.len() {
            iov[0] = IoSlice::new(&self.buf[self.pos..]);
            count = 1;
        }
        if let Some(raw) = &self.raw {
            count += raw.slices(&mut iov[count..]);
        }
        count
    }

    /// Bytes to write in all.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos + self.raw.as_deref().map_or(0, RawPlan::len)
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Conn {
    // ---- input ----

    /// True when the connection can take more input now.
    pub fn wants_input(&self) -> bool {
        let buffer = match &self.tls {
            Some(tls) => &tls.cipher_in,
            None => &self.recv,
        };
        !self.peer_eof && (self.linger_until.is_some() || buffer.has_room())
    }

    /// Where the backend puts received bytes (empty when the buffer is
    /// full). While lingering, input is discarded, so the whole buffer is
    /// offered.
    pub fn input_space(&mut self) -> &mut [u8] {
        if self.linger_until.is_some() {
            return self.recv.scratch();
        }
        match &mut self.tls {
            Some(tls) => tls.cipher_in.space(),
            None => self.recv.space(),
        }
    }

    /// `n` bytes were written into [`Conn::input_space`].
    pub fn on_input(&mut self, n: usize, now: Instant) {
        if self.linger_until.is_some() {
            return;
        }
        match &mut self.tls {
            Some(tls) => tls.cipher_in.commit(n),
            None => self.recv.commit(n),
        }
        self.last_activity = now;
    }

    /// The client closed its sending side.
    pub fn on_eof(&mut self) {
        self.peer_eof = true;
    }

    /// Feeds buffered ciphertext to TLS and moves the plaintext it yields
    /// into the receive buffer, as far as that has room. Returns whether
    /// bytes moved. Does nothing while TLS is starting.
    pub(super) fn tls_input(&mut self, cells: &ShardCells) -> Result<bool, ConnError> {
        let Some(tls) = self.tls.as_deref_mut().filter(|t| t.is_on()) else {
            return Ok(false);
        };
        let mut moved = false;
        loop {
            if !tls.cipher_in.is_empty() {
                let taken = match tls.layer.receive(tls.cipher_in.filled()) {
                    Ok(taken) => taken,
                    Err(e) => {
                        tls.count_handshake(cells, false);
                        return Err(e.into());
                    }
                };
                tls.cipher_in.consume(taken);
                moved |= taken > 0;
                if !tls.layer.is_handshaking() {
                    tls.count_handshake(cells, true);
                }
            }
            let got = tls.layer.read_plaintext(self.recv.space());
            self.recv.commit(got);
            moved |= got > 0;
            if got == 0 || tls.cipher_in.is_empty() {
                break;
            }
        }
        if tls.layer.peer_closed() {
            // close_notify: a clean end of input.
            self.peer_eof = true;
        }
        Ok(moved)
    }

    /// The session answered STLS with `+OK`: from here on input is
    /// ciphertext (see the module comment).
    pub(super) fn start_tls(&mut self, layer: TlsLayer, offer: Offer) {
        self.recv.clear();
        self.tls = Some(Box::new(Tls::starting(layer, self.recv.capacity(), offer)));
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.out.len() + self.unsent.as_ref().map_or(0, |(b, p)| b.len() - p)
    }

    // ---- output ----

    /// True when bytes are waiting to be sent (or a raw range is due).
    pub fn has_output(&self) -> bool {
        self.unsent.is_some()
            || !self.out.is_empty()
            || self.body.as_ref().is_some_and(BodyStream::has_raw_left)
            || self.tls.as_ref().is_some_and(|t| t.layer.wants_write())
    }

    /// Hands the next bytes to send to the backend, or `None` when nothing
    /// is due or an earlier `Outgoing` is still with the backend.
    pub fn take_output(&mut self) -> Result<Option<Outgoing>, ConnError> {
        if self.out_with_backend {
            return Ok(None);
        }
        let outgoing = if let Some((buf, pos)) = self.unsent.take() {
            Outgoing {
                buf,
                pos,
                raw: None,
            }
        } else if let Some(tls) = self.tls.as_deref_mut().filter(|t| t.is_on()) {
            if !self.out.is_empty() {
                tls.layer.send_plaintext(&self.out)?;
                self.out.clear();
            }
            let mut buf = std::mem::take(&mut self.spare);
            if tls.layer.write_ciphertext(&mut buf) == 0 {
                self.spare = buf;
                return Ok(None);
            }
            Outgoing {
                buf,
                pos: 0,
                raw: None,
            }
        } else {
            // Plaintext, including the `+OK` of an STLS.
            let raw = match &self.body {
                Some(body) if self.tls.is_none() => body.plan_raw(self.out.len())?,
                _ => None,
            };
            if self.out.is_empty() && raw.is_none() {
                return Ok(None);
            }
            let buf = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare));
            Outgoing { buf, pos: 0, raw }
        };
        self.out_with_backend = true;
        Ok(Some(outgoing))
    }

    /// The backend sent `sent` bytes of `outgoing` (0 when the socket was
    /// full) and gives it back.
    pub fn output_done(&mut self, mut outgoing: Outgoing, sent: usize, now: Instant) {
        self.out_with_backend = false;
        if sent > 0 {
            self.last_activity = now;
            self.bytes_sent += sent as u64;
        }
        let buffered = outgoing.buf.len() - outgoing.pos;
        if sent < buffered {
            outgoing.pos += sent;
            self.unsent = Some((outgoing.buf, outgoing.pos));
            return;
        }
        if let (Some(plan), Some(body)) = (&outgoing.raw, &mut self.body) {
            body.advance_raw(plan, sent - buffered);
        }
        let mut buf = outgoing.buf;
        buf.clear();
        if buf.capacity() <= SPARE_BYTES_MAX {
            self.spare = buf;
        }
        // STLS: the +OK has left in plaintext; everything from here is TLS.
        if self.out.is_empty()
            && let Some(tls) = self.tls.as_deref_mut()
            && let Some(offer) = tls.starting.take()
        {
            self.session.tls_started(offer);
        }
    }
}
