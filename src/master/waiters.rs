//! Who waits for what: the control clients a command owes an answer, as one typed
//! structure instead of loose lists of tickets.
//!
//! A control client is known by its ticket (indices into the client list are not
//! stable). Every command that a client asked for carries its `Waiters`, and whatever
//! ends the command (done, failed, overtaken by a stop) answers all of them at once, so
//! nobody is left without an answer.

/// A control client, by the number it was given when accepted.
pub type Ticket = u64;

/// The control clients waiting for one outcome (none for a signal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiters(Vec<Ticket>);

impl Waiters {
    /// Nobody (a signal asked).
    pub fn none() -> Waiters {
        Waiters(Vec::new())
    }

    /// Adds the waiters of another request for the same outcome.
    pub fn join(&mut self, other: Waiters) {
        self.0.extend(other.0);
    }

    pub fn tickets(&self) -> &[Ticket] {
        &self.0
    }
}

impl From<Option<Ticket>> for Waiters {
    fn from(t: Option<Ticket>) -> Waiters {
        Waiters(t.into_iter().collect())
    }
}

impl FromIterator<Ticket> for Waiters {
    fn from_iter<I: IntoIterator<Item = Ticket>>(iter: I) -> Waiters {
        Waiters(iter.into_iter().collect())
    }
}

impl IntoIterator for Waiters {
    type Item = Ticket;
    type IntoIter = std::vec::IntoIter<Ticket>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Requests that wait for something else to end before they can run or be answered.
#[derive(Debug, Default)]
pub struct Pending {
    /// A reload asked for while another was in flight (or while the workers of a
    /// rolled-back one are still around): it runs when that ends. Reload storms
    /// coalesce into this one queued reload, with every asker's ticket.
    pub reload: Option<Waiters>,
    /// Upgrades asked for during a reload: refused (try again) once the reload ends.
    pub upgrade: Waiters,
    /// Clients that asked for a stop: answered "stopped" when the master exits.
    pub stop: Waiters,
}

impl Pending {
    /// Queues a reload behind the one in flight, merging it with any already queued.
    pub fn queue_reload(&mut self, waiters: Waiters) {
        self.reload.get_or_insert_with(Waiters::none).join(waiters);
    }
}
