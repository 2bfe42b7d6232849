//! The sans-I/O HTTP/1.1 core: bytes in, response bytes out.
//!
//! Nothing here touches a socket or a runtime, so every rule is unit-tested
//! with byte literals and every engine shares it unchanged. The entry point
//! for engines is [`session::Session::on_input`]; the rest are its steps:
//! [`request`] (find and parse a head), [`target`] (normalise the path),
//! [`resource`] (answer for a file: [`negotiate`] the coding, evaluate
//! [`conditional`] requests and [`range`]s, from the fields gathered in
//! [`selection`]), [`response`] (append precomputed heads and bodies to an
//! [`response::Output`]), [`status`] (codes and error pages) and [`date`]
//! (the per-thread `Date` cache). [`deadline`] holds the timeout rules every
//! engine applies around its reads and writes; [`health`] answers the health
//! check.

pub mod conditional;
pub mod date;
pub mod deadline;
pub mod health;
pub mod negotiate;
pub mod range;
pub mod request;
pub mod resource;
pub mod response;
pub mod selection;
pub mod session;
pub mod status;
pub mod target;

pub use deadline::{Deadline, DeadlineClock, Expiry, Timeouts};
pub use request::Limits;
pub use response::Output;
pub use session::{Exchange, Next, Observer, Progress, Session};
