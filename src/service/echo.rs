//! `echo`: writes back whatever it reads, on long-lived connections. The seeds' test
//! server, and a clean probe of the worker loop's flow control: what comes in must go
//! out, so a client that does not read its replies is held back by the water marks.

use std::net::IpAddr;

use super::{Handler, Io, Service};

/// The echo service.
pub struct Echo;

/// A stateless handler: zero-sized, so a boxed one costs no allocation per connection.
struct EchoConn;

impl Service for Echo {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(EchoConn)
    }
}

impl Handler for EchoConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        crate::fault::maybe_panic(data);
        io.write(data);
        data.len()
    }
}
