//! Integration tests: the real `mailpilot` binary in a temp HOME against real (or, for fault
//! injection, in-process) servers.

mod support;

mod auth;
mod config;
mod generated;
mod hostile;
mod identities;
mod jobs;
mod layers;
mod login;
mod merge;
mod network;
mod poll;
mod relay;
mod sealed;
mod secrets;
mod send;
mod sendmail;
mod shared_state;
mod stack;
mod watch;
