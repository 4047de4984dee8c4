//! `echo`: writes back whatever it reads, on long-lived connections. The seeds' test
//! server, and a clean probe of the worker loop's flow control: what comes in must go
//! out, so a client that does not read its replies is held back by the water marks.
//!
//! A stream moves at reload whenever its echo is fully sent: there is no state.

use std::net::IpAddr;

use super::{check_stateless, Handler, Io, ResumeError, Service, Suspended};

/// The only state format: none.
const VERSION: u32 = 1;

/// `echo` takes no key of its own in its `[[listen]]` tables: any key besides the
/// common ones is refused.
pub type EchoOptions = super::NoOptions;

/// The echo service.
pub struct Echo;

/// A stateless handler: zero-sized, so a boxed one costs no allocation per connection.
struct EchoConn;

impl Service for Echo {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(EchoConn)
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        check_stateless(VERSION, state, version)?;
        Ok(Box::new(EchoConn))
    }
}

impl Handler for EchoConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        crate::fault::maybe_panic(data);
        io.write(data);
        data.len()
    }

    /// Everything read is echoed at once, so at a quiescent point (the echo is sent)
    /// nothing is in flight.
    fn suspend(&mut self) -> Option<Suspended> {
        Some(Suspended::new(VERSION, Vec::new()))
    }
}
