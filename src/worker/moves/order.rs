//! Which connections leave a draining worker first, and when each is taken out.
//!
//! A draining worker may hold tens of thousands of connections that can move, and the
//! channel to the master takes about a thousand at a time. A connection taken out of
//! the loop as soon as the drain starts would wait, unserved, behind everything queued
//! before it: a client that speaks meanwhile waits for the whole queue. So connections
//! wait here as tokens, still served by this worker, and are suspended and taken out
//! only when the channel has room for them (`Worker::flush_handoff`), at most a batch
//! ahead of what it takes. The order: connections that finished an exchange during the
//! drain (their clients are active) first, then the rest, most recently active first.
//! One that is busy when its turn comes is not taken; it comes back here after its
//! next exchange.

use std::collections::{HashMap, VecDeque};

use super::super::token::Token;

/// Connections waiting for their turn to move, as tokens (a token whose connection
/// closed meanwhile finds nothing: tokens carry their slot's generation).
#[derive(Debug, Default)]
pub(in crate::worker) struct MoveOrder {
    /// Active during the drain: they go first.
    hot: VecDeque<Token>,
    /// Present when the drain started, most recently active first.
    cold: VecDeque<Token>,
    /// Each waiting token and the queue it is to be taken from (`true`: hot). A token
    /// met in the other queue is a stale copy and is skipped.
    waiting: HashMap<u64, bool>,
}

impl MoveOrder {
    /// Adds a connection; one already waiting in the cold queue that became active
    /// goes to the hot one.
    pub(in crate::worker) fn push(&mut self, token: Token, hot: bool) {
        match self.waiting.get(&token.0) {
            Some(&was_hot) if was_hot || !hot => return,
            _ => {}
        }
        self.waiting.insert(token.0, hot);
        if hot {
            self.hot.push_back(token);
        } else {
            self.cold.push_back(token);
        }
    }

    /// The next connection whose turn it is.
    pub(in crate::worker) fn pop(&mut self) -> Option<Token> {
        loop {
            let (token, hot) = match self.hot.pop_front() {
                Some(t) => (t, true),
                None => (self.cold.pop_front()?, false),
            };
            if self.waiting.get(&token.0) == Some(&hot) {
                self.waiting.remove(&token.0);
                return Some(token);
            }
        }
    }

    pub(in crate::worker) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Nothing moves any more: every connection stays where it is.
    pub(in crate::worker) fn clear(&mut self) {
        self.hot.clear();
        self.cold.clear();
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_ones_first_then_the_rest_in_order_each_once() {
        let t = |i| Token::new(i, 1);
        let mut o = MoveOrder::default();
        for i in 0..4 {
            o.push(t(i), false);
        }
        o.push(t(2), true); // became active while waiting
        o.push(t(2), true); // and again: still once
        o.push(t(9), true);
        o.push(t(9), false); // a hot one stays hot
        let order: Vec<usize> = std::iter::from_fn(|| o.pop()).map(Token::index).collect();
        assert_eq!(order, vec![2, 9, 0, 1, 3]);
        assert!(o.is_empty());
        // Taken, then back after an exchange: it waits again.
        o.push(t(0), true);
        assert_eq!(o.pop().map(Token::index), Some(0));
        assert_eq!(o.pop(), None);
    }
}
