//! Patroni, which runs each node's Postgres instances (ADR 016): the `patroni.yml` berth
//! renders for each instance ([`config`]), what Patroni's keys in the DCS say ([`dcs`]), and
//! the requests berth makes to its REST API ([`rest`]).

pub mod archiving;
pub mod config;
pub mod dcs;
pub mod etcd_auth;
pub mod pglogical;
pub mod pglogical_join;
pub mod rest;
pub mod restore;
pub mod takeover;
pub mod watch;

pub use dcs::{parse, read};
