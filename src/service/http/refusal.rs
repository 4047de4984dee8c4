//! `http`'s error responses: which refusals exist, and the status and body each gets.

use super::response::OK_VARIANTS;

/// Error responses; they always close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    BadRequest,
    Timeout,
    TooLarge,
    NotImplemented,
    BodyTooLarge,
}

impl Refusal {
    pub(super) const ALL: [Refusal; 5] = [
        Refusal::BadRequest,
        Refusal::Timeout,
        Refusal::TooLarge,
        Refusal::NotImplemented,
        Refusal::BodyTooLarge,
    ];

    pub(super) fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Timeout => 408,
            Refusal::TooLarge => 431,
            Refusal::NotImplemented => 501,
            Refusal::BodyTooLarge => 413,
        }
    }

    pub(super) fn body(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad request\n",
            Refusal::Timeout => "request timeout\n",
            Refusal::TooLarge => "request header fields too large\n",
            Refusal::NotImplemented => "not implemented\n",
            Refusal::BodyTooLarge => "content too large\n",
        }
    }

    /// Index in [`Responses::all`], after the OK variants.
    pub(super) fn index(self) -> usize {
        OK_VARIANTS.len() + self as usize
    }
}
