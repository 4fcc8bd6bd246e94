//! NAT: service load balancing (Maglev) and the service table.

mod maglev;
mod services;

pub use maglev::{mix as maglev_mix, Maglev};
pub use services::{Service, ServiceTable};
