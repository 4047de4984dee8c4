//! The slab holding a worker's connections, addressed by token.

use super::conn::Conn;
use super::token::{Token, GEN_MASK};

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// The worker's connections, addressed by token.
#[derive(Default)]
pub struct Slab {
    slots: Vec<Slot>,
    free: Vec<usize>,
    len: usize,
    /// Generation of slots created anew: above every generation a slot dropped by
    /// `shrink` ever had, so a stale token of a dropped slot never matches its successor.
    gen_floor: u32,
}

impl Slab {
    pub fn insert(&mut self, conn: Conn) -> Token {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let slot = &mut self.slots[i];
            slot.gen = slot.gen.wrapping_add(1);
            slot.conn = Some(conn);
            return Token::new(i, slot.gen);
        }
        let gen = self.gen_floor;
        self.slots.push(Slot {
            gen,
            conn: Some(conn),
        });
        Token::new(self.slots.len() - 1, gen)
    }

    /// Drops the free slots at the end of the table and gives back the capacity the
    /// table no longer needs, so a worker that once held 100k connections does not
    /// keep their table. Slots in use never move (tokens stay valid).
    pub fn shrink(&mut self) {
        while self.slots.last().is_some_and(|s| s.conn.is_none()) {
            if let Some(s) = self.slots.pop() {
                self.gen_floor = self.gen_floor.max(s.gen.wrapping_add(1) & GEN_MASK);
            }
        }
        let n = self.slots.len();
        self.free.retain(|&i| i < n);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Slots allocated (in use, free, or spare capacity), for the trim decision.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn get(&self, t: Token) -> Option<&Conn> {
        self.slots
            .get(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())
            .and_then(|s| s.conn.as_ref())
    }

    pub fn get_mut(&mut self, t: Token) -> Option<&mut Conn> {
        self.slots
            .get_mut(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())
            .and_then(|s| s.conn.as_mut())
    }

    pub fn remove(&mut self, t: Token) -> Option<Conn> {
        let slot = self
            .slots
            .get_mut(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())?;
        let conn = slot.conn.take()?;
        self.free.push(t.index());
        self.len -= 1;
        Some(conn)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens of every open connection (a snapshot, so the caller may close some).
    pub fn tokens(&self) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| Token::new(i, s.gen))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// A slot is a connection plus its generation: no more.
    #[test]
    fn a_slot_stays_small() {
        let size = std::mem::size_of::<super::Slot>();
        println!("size_of::<Slot>() = {size} bytes");
        assert!(
            size <= std::mem::size_of::<super::Conn>() + 8,
            "Slot is {size} bytes"
        );
    }
}
