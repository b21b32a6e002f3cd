//! Buffers set aside by HTTP/1.1 connections waiting for their next request, per thread, for the
//! next connection on that thread whose request arrives.
//!
//! ```text
//!  response sent, next request not there ─► Conn::release_buffers ─► give(buffer) ─► this
//!      thread's list (≤ MAX_SPARES per kind; more, or an oversized buffer, are freed)
//!  next request readable ─► take_into(empty buffer) ─► a spare one, or none (allocated as before)
//! ```
//!
//! An idle keep-alive connection still holds no buffer (memory per idle connection:
//! docs/benchmarks.md); a busy one no longer frees and allocates its four buffers around every
//! wait for the next request (mimalloc's generic path for the 4 KiB and 16 KiB ones: 2.1% of the
//! gateway's CPU time under HTTP/1.1 keep-alive load in bench/gateway's profile, 2026-12-08 (b)).
//! Like nginx's free lists of buffers, bounded: at most [`MAX_SPARES`] of each kind per thread
//! (~170 KiB per thread at the fast path's buffer sizes).

use std::cell::RefCell;

/// Spare buffers kept per kind and thread.
pub const MAX_SPARES: usize = 8;

/// A thread's spare buffers of one kind.
pub struct Spares<T> {
    list: RefCell<Vec<Vec<T>>>,
    /// Larger buffers (in elements) are freed, not kept: a connection that grew one for a long
    /// head or a large read does not pin it on the thread.
    max_capacity: usize,
}

impl<T> Spares<T> {
    /// An empty list keeping buffers of at most `max_capacity` elements (not bytes: a
    /// `Vec<(Range, Range)>`'s bound counts pairs).
    pub const fn new(max_capacity: usize) -> Self {
        Spares {
            list: RefCell::new(Vec::new()),
            max_capacity,
        }
    }

    /// Takes `v`'s allocation (leaving `v` empty, without capacity) and keeps it emptied when
    /// there is room and it is not larger than the bound; frees it otherwise.
    pub fn give(&self, v: &mut Vec<T>) {
        let mut v = std::mem::take(v);
        if v.capacity() == 0 || v.capacity() > self.max_capacity {
            return;
        }
        let mut list = self.list.borrow_mut();
        if list.len() < MAX_SPARES {
            v.clear();
            list.push(v);
        }
    }

    /// Gives `v` a spare allocation if it has none and one is kept.
    pub fn take_into(&self, v: &mut Vec<T>) {
        if v.capacity() == 0
            && let Some(spare) = self.list.borrow_mut().pop()
        {
            *v = spare;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_capacity() {
        let spares = Spares::new(4096);
        let mut v = Vec::with_capacity(1024);
        v.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let ptr = v.as_ptr();
        spares.give(&mut v);
        assert_eq!(v.capacity(), 0, "the connection keeps nothing");
        let mut w: Vec<u8> = Vec::new();
        spares.take_into(&mut w);
        assert!(w.is_empty());
        assert_eq!((w.capacity(), w.as_ptr()), (1024, ptr));
        // A buffer that has an allocation keeps it; the list is empty now anyway.
        let mut x: Vec<u8> = Vec::with_capacity(8);
        spares.take_into(&mut x);
        assert_eq!(x.capacity(), 8);
    }

    #[test]
    fn at_most_max_spares_are_kept_and_oversized_ones_are_freed() {
        let spares = Spares::new(4096);
        let mut big: Vec<u8> = Vec::with_capacity(8192);
        spares.give(&mut big);
        assert_eq!(spares.len(), 0);
        for _ in 0..MAX_SPARES + 3 {
            let mut v: Vec<u8> = Vec::with_capacity(16);
            spares.give(&mut v);
        }
        assert_eq!(spares.len(), MAX_SPARES);
        let mut none: Vec<u8> = Vec::new();
        spares.give(&mut none);
        assert_eq!(spares.len(), MAX_SPARES, "an empty vector is not a spare");
    }
}
